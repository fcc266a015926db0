"""A portal's REST events as the app reads them: form-encoded with bracketed keys, typed here.

A portal POSTs ``event``, ``event_handler_id``, ``data[...]``, ``ts`` and ``auth[...]``, every
value a string. ``auth`` always names the portal (``member_id``, ``domain``, endpoints) and
carries ``application_token``; tokens come only with events tied to a user, and a refresh
token only with ``ONAPPINSTALL``. Nothing in an event is trusted until checked: see
:mod:`b24app.events`.
"""

import re
import time
from dataclasses import dataclass, field

from b24app.bitrix.forms import FormError, unflatten
from b24app.bitrix.frame import DOMAIN_PATTERN, MEMBER_ID_PATTERN, TOKEN_PATTERN

EVENT_NAME = re.compile(r"^[A-Z0-9_]{1,64}$")
_NUMBER = re.compile(r"^[0-9]{1,12}$")


class EventError(ValueError):
    """An event's body is malformed; the message says which field, and is safe to show."""


@dataclass(frozen=True)
class EventAuth:
    """The ``auth[...]`` fields of an event."""

    member_id: str
    domain: str
    client_endpoint: str
    server_endpoint: str
    application_token: str = field(repr=False)
    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    # When the access token expires, in Unix seconds (None without a token).
    expires: int | None
    user_id: int | None
    scope: str
    status: str


@dataclass(frozen=True)
class PortalEvent:
    """One event a portal posted."""

    name: str
    handler_id: int | None
    ts: int | None
    data: dict
    auth: EventAuth

    @property
    def clean(self):
        """Say whether an ONAPPUNINSTALL asks for the app's data to be deleted too."""
        return str(self.data.get("CLEAN", "0")) == "1"


def parse_event(pairs):
    """Return the :class:`PortalEvent` that the form's ``(key, value)`` pairs carry.

    :raise EventError: naming the first missing or malformed field.
    """
    try:
        payload = unflatten(pairs)
    except FormError as exc:
        raise EventError(str(exc)) from None
    name = _text(payload, "event").upper()
    auth = payload.get("auth")
    auth = auth if isinstance(auth, dict) else {}
    member_id = _text(auth, "member_id")
    if not name or not member_id:
        raise EventError("An event needs event and auth[member_id].")
    # Both end up in log lines: anything but the protocol's own characters is refused.
    if not EVENT_NAME.match(name) or not MEMBER_ID_PATTERN.match(member_id):
        raise EventError("The event's name or auth[member_id] is malformed.")
    domain = _text(auth, "domain")
    if domain and not DOMAIN_PATTERN.match(domain):
        raise EventError("auth[domain] is not a host name.")
    tokens = {key: _text(auth, key) for key in ("access_token", "refresh_token")}
    for key, value in tokens.items():
        if value and not TOKEN_PATTERN.match(value):
            raise EventError(f"auth[{key}] is malformed.")
    data = payload.get("data")
    return PortalEvent(
        name=name,
        handler_id=_number(payload, "event_handler_id", "event_handler_id"),
        ts=_number(payload, "ts", "ts"),
        data=data if isinstance(data, dict) else {},
        auth=EventAuth(
            member_id=member_id,
            domain=domain.lower(),
            client_endpoint=_text(auth, "client_endpoint"),
            server_endpoint=_text(auth, "server_endpoint"),
            application_token=_text(auth, "application_token"),
            access_token=tokens["access_token"],
            refresh_token=tokens["refresh_token"],
            expires=_expires(auth) if tokens["access_token"] else None,
            user_id=_number(auth, "user_id", "auth[user_id]"),
            scope=_text(auth, "scope"),
            status=_text(auth, "status"),
        ),
    )


def _text(values, key):
    value = values.get(key, "")
    return value.strip() if isinstance(value, str) else ""


def _number(values, key, label):
    value = _text(values, key)
    if not value:
        return None
    if not _NUMBER.match(value):
        raise EventError(f"{label} is not a whole number.")
    return int(value)


def _expires(auth):
    """Return when the event's access token expires: ``expires``, else now + ``expires_in``."""
    expires = _number(auth, "expires", "auth[expires]")
    if expires is not None:
        return expires
    lifetime = _number(auth, "expires_in", "auth[expires_in]")
    return int(time.time()) + (lifetime if lifetime is not None else 3600)
