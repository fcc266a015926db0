"""Delivery of REST events (ONAPPINSTALL, ONAPPUNINSTALL) to the handlers an app bound.

A portal queues events and POSTs them later, form-encoded with bracketed keys, once, without
retries; the sandbox does the same from a background thread.
"""

import ipaddress
import logging
import threading
import time
from urllib.parse import urlsplit

import requests

from b24app.bitrix import forms

log = logging.getLogger(__name__)

DELIVERY_TIMEOUT = 10.0


def is_loopback(url):
    """Return whether ``url`` points at this machine by a loopback IP address."""
    host = urlsplit(url).hostname or ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def post_in_background(deliveries, record, delay=None):
    """POST each delivery's payload to its handler in turn, from a new thread.

    :param deliveries: ``EventDelivery`` records; each one's ``status`` or ``error`` is filled
        in, and ``record(delivery)`` is called once it is done, whatever the outcome.
    :param delay: seconds to wait before the first POST, as a portal under load does.
    """
    thread = threading.Thread(
        target=_post_all, args=(deliveries, record, delay), name="sandbox-event", daemon=True
    )
    thread.start()
    return thread


def _post_all(deliveries, record, delay):
    if delay:
        time.sleep(delay)
    for delivery in deliveries:
        _post(delivery, record)


def _post(delivery, record):
    try:
        if not is_loopback(delivery.handler):
            # The sandbox never sends traffic off this machine.
            delivery.error = "not delivered: the sandbox only posts events to loopback addresses"
        else:
            response = requests.post(
                delivery.handler,
                data=forms.encode(delivery.payload),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                timeout=DELIVERY_TIMEOUT,
                allow_redirects=False,
            )
            delivery.status = response.status_code
    except requests.RequestException as error:
        delivery.error = f"{type(error).__name__}: {error}"
    except Exception as error:  # A failed delivery must never take the portal down.
        delivery.error = f"{type(error).__name__}: {error}"
    if delivery.error:
        log.warning(
            "Event %s for portal %s to %s failed: %s",
            delivery.event,
            delivery.member_id,
            urlsplit(delivery.handler).netloc,
            delivery.error,
        )
    else:
        log.info(
            "Event %s for portal %s to %s answered %s",
            delivery.event,
            delivery.member_id,
            urlsplit(delivery.handler).netloc,
            delivery.status,
        )
    record(delivery)
