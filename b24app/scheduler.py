"""The ping scheduler: every interval, one ``ping`` Pull event to every installed portal.

Each tick is claimed in the database before it is acted on, so when several processes run a
scheduler (web workers, a separate scheduler command) every tick is sent by exactly one of them.
Each portal's ping runs on a worker pool: a slow or failing portal never holds up the others,
and a portal whose previous ping is still under way is skipped rather than piled up. A portal
that asked the app to back off is skipped until its backoff ends, and one that shut the app out
(see :class:`~b24app.models.AccessProblem`) is not pinged until the app is opened there again.
"""

import logging
import math
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from b24app import eventlog, store
from b24app.api import issue_ping_receipt
from b24app.bitrix import rest_client
from b24app.bitrix.errors import AccessLost, BitrixError, CallRejected, RetryLater
from b24app.db import transaction
from b24app.encryption import TokenKeyError
from b24app.models import SchedulerClaim, utcnow

log = logging.getLogger(__name__)

PING_JOB = "ping"


def tick_start(interval, now=None):
    """Return when the interval that ``now`` falls in began, in whole milliseconds.

    Ticks are named by their start time rather than counted, so that their names keep
    growing when the interval setting changes between runs.
    """
    now = time.time() if now is None else now
    return int(math.floor(now / interval) * interval * 1000)


def claim_tick(job, tick):
    """Claim ``tick`` (a :func:`tick_start`) of ``job``; return whether this process got it."""
    owner = f"{socket.gethostname()}:{os.getpid()}"
    with transaction() as session:
        claimed = session.execute(
            update(SchedulerClaim)
            .where(SchedulerClaim.job == job, SchedulerClaim.last_tick < tick)
            .values(last_tick=tick, claimed_by=owner, claimed_at=utcnow())
        ).rowcount
        if claimed:
            return True
        if session.scalar(select(SchedulerClaim.job).where(SchedulerClaim.job == job)):
            return False
    try:
        with transaction() as session:
            session.execute(
                insert(SchedulerClaim).values(
                    job=job, last_tick=tick, claimed_by=owner, claimed_at=utcnow()
                )
            )
        return True
    except IntegrityError:
        # Another process created the job's row first, and with it claimed this tick.
        return False


def ping_params(member_id, sequence, sent_at):
    """Return the ``PARAMS`` of a ping: its send time as the SDK formats it, its number, and the
    receipt with which the page acknowledges it."""
    return {
        "param_1": datetime.fromtimestamp(sent_at).strftime("%Y-%m-%d %H:%M:%S"),
        "sequence": sequence,
        "sent_at": sent_at,
        "source": "scheduler",
        "receipt": issue_ping_receipt(member_id, sequence, sent_at),
    }


def send_ping(member_id, module_id):
    """Send one ping to the portal with ``member_id``; return its sequence number.

    :raise BitrixError: when the portal does not accept it.
    """
    sequence = store.next_ping_sequence(member_id)
    sent_at = time.time()
    started = time.monotonic()
    rest_client().call(
        member_id,
        "pull.application.event.add",
        {
            "COMMAND": "ping",
            "PARAMS": ping_params(member_id, sequence, sent_at),
            "MODULE_ID": module_id,
        },
        # A ping is not repeated: the next tick sends a newer one, and waiting here would hold
        # a worker that other portals' pings need. A failure backs the portal off instead.
        attempts=1,
    )
    store.record_ping_sent(member_id, utcnow())
    log.debug(
        "Ping %s sent to portal %s in %.0f ms",
        sequence,
        member_id,
        (time.monotonic() - started) * 1000,
    )
    eventlog.record_ping_sent(member_id, sequence, sent_at, (time.monotonic() - started) * 1000)
    return sequence


class PingScheduler:
    """Run the ping job of ``app`` on a background thread.

    :param app: the Flask app whose settings, database and REST client to use.
    :param max_workers: how many portals may be pinged at the same moment.
    """

    def __init__(self, app, max_workers=8):
        self.app = app
        self.interval = app.config["PING_INTERVAL"]
        self.module_id = app.config["PULL_MODULE_ID"]
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ping")
        self._in_flight = set()
        self._in_flight_lock = threading.Lock()
        # The backoff each portal was last reported skipped for, to say so once per backoff.
        self._skipped_backoffs = {}
        self._scheduler = BackgroundScheduler(timezone="UTC")
        # Fire mid-interval, well away from the tick boundaries that claims are keyed on.
        first = (math.floor(time.time() / self.interval) + 1.5) * self.interval
        self._scheduler.add_job(
            self.tick,
            "interval",
            seconds=self.interval,
            start_date=datetime.fromtimestamp(first, UTC),
            id=PING_JOB,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(1, int(self.interval)),
        )
        eventlog.pruning.schedule(self._scheduler, app)

    def start(self):
        """Start sending pings; return self."""
        self._scheduler.start()
        log.info(
            "Scheduler started: ping every %ss on Pull module %r", self.interval, self.module_id
        )
        eventlog.record_scheduler(self.app, started=True, interval=self.interval)
        return self

    def shutdown(self):
        """Stop sending pings and wait for those under way."""
        self._scheduler.shutdown(wait=True)
        self._pool.shutdown(wait=True)
        log.info("Scheduler stopped")
        eventlog.record_scheduler(self.app, started=False, interval=self.interval)

    def tick(self):
        """Claim the current tick and hand each installed portal's ping to the pool."""
        tick = tick_start(self.interval)
        with self.app.app_context():
            if not claim_tick(PING_JOB, tick):
                return
            portals = store.pingable_portals()
        now = utcnow()
        for member_id, backoff_until in portals:
            if backoff_until and backoff_until > now:
                self._report_skip(member_id, backoff_until)
                continue
            self._skipped_backoffs.pop(member_id, None)
            with self._in_flight_lock:
                if member_id in self._in_flight:
                    log.info("Portal %s: previous ping still under way, skipped", member_id)
                    continue
                self._in_flight.add(member_id)
            self._pool.submit(self._ping, member_id)

    def _report_skip(self, member_id, backoff_until):
        if self._skipped_backoffs.get(member_id) != backoff_until:
            self._skipped_backoffs[member_id] = backoff_until
            log.info(
                "Portal %s: backing off, pings skipped until %s UTC",
                member_id,
                f"{backoff_until:%X}",
            )

    def _ping(self, member_id):
        try:
            with self.app.app_context():
                send_ping(member_id, self.module_id)
        except (RetryLater, AccessLost) as exc:
            # The REST client has logged it, with the backoff or the access problem.
            eventlog.record_ping_failed(self.app, member_id, exc.code, exc.description)
        except CallRejected as exc:
            log.error("Ping to portal %s rejected: %s", member_id, exc)
            eventlog.record_ping_failed(self.app, member_id, exc.code, exc.description)
        except BitrixError as exc:
            log.warning("Ping to portal %s failed: %s", member_id, exc)
            eventlog.record_ping_failed(self.app, member_id, exc.code, exc.description)
        except TokenKeyError as exc:
            log.error("Ping to portal %s not sent: %s", member_id, exc)
            eventlog.record_ping_failed(self.app, member_id, "TOKEN_KEY_ERROR", str(exc))
        except Exception:
            log.exception("Ping to portal %s failed unexpectedly", member_id)
            eventlog.record_ping_failed(self.app, member_id, "UNEXPECTED", "see the server log")
        finally:
            with self._in_flight_lock:
                self._in_flight.discard(member_id)


def start_scheduler(app):
    """Create and start the ping scheduler of ``app``; return it (call ``shutdown()`` to stop)."""
    return PingScheduler(app).start()
