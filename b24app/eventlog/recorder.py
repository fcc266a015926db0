"""Recording the event log without ever slowing or breaking the action that is recorded.

``record()`` only puts a row on a bounded in-memory queue. A writer thread per app takes rows off
in batches and inserts them in one statement. A full queue drops the row and counts it instead
of waiting; a failing database costs the writer a warning and the batch, never the caller an
exception. The writer leaves when it has been idle for a while and the next row starts it again,
so an app that records nothing holds no thread.
"""

import atexit
import json
import logging
import queue
import re
import threading
import time
import weakref

from flask import current_app, has_app_context
from sqlalchemy import insert, select

from b24app.models import EventLogEntry, Portal, utcnow

log = logging.getLogger(__name__)


class Kind:
    """What happened; the log's ``kind`` column."""

    INSTALL_START = "install_start"
    INSTALL_FINISH = "install_finish"
    HANDSHAKE = "handshake"
    APP_OPEN = "app_open"
    ADMIN_OPEN = "admin_open"
    TOKEN_REFRESH = "token_refresh"  # noqa: S105 (a kind of row, not a secret)
    EVENT = "event"
    PING_SEND = "ping_send"
    PING_DELIVERY = "ping_delivery"
    SCHEDULER_START = "scheduler_start"
    SCHEDULER_STOP = "scheduler_stop"
    UNINSTALL = "uninstall"
    LOG_PRUNE = "log_prune"


class Outcome:
    """How it went; the log's ``outcome`` column."""

    OK = "ok"
    # The app tried and did not succeed (a ping, a refresh).
    FAILED = "failed"
    # The app turned down what someone else sent (a handshake, an event, a page visit).
    REFUSED = "refused"
    # Taken in, not yet acted on (an event from a portal, before it is checked).
    RECEIVED = "received"


KINDS = tuple(value for name, value in vars(Kind).items() if name.isupper())
OUTCOMES = (Outcome.OK, Outcome.FAILED, Outcome.REFUSED, Outcome.RECEIVED)

# Keys that may hold a token or secret; details come from our own code, but a payload copied
# into them must not carry one into the log.
SECRET_KEYS = {
    "auth",
    "auth_id",
    "refresh_id",
    "access_token",
    "refresh_token",
    "application_token",
    "client_secret",
    "secret",
    "password",
    "token",
}
SECRET_KEY_PARTS = ("token", "secret", "password")
MAX_MESSAGE = 255
MAX_STRING = 500
# What no database stores as text: NUL (PostgreSQL refuses it) and lone surrogates (no UTF-8).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
MAX_DETAILS = 4000
MAX_DEPTH = 4

QUEUE_SIZE = 10_000
BATCH_SIZE = 500
# How long the writer gathers a batch: short, so that the live tail sees rows within a second.
BATCH_WAIT = 0.1
IDLE_EXIT = 30.0
DOMAIN_CACHE_SECONDS = 60.0
DROP_WARNING_INTERVAL = 10.0

_STOP = object()


class _Flush:
    """A marker on the queue: set once every row queued before it has been written."""

    def __init__(self):
        self.done = threading.Event()


def _is_secret(key):
    name = str(key).lower()
    return name in SECRET_KEYS or any(part in name for part in SECRET_KEY_PARTS)


def storable(text):
    """Return ``text`` with what no database can store as text replaced by U+FFFD."""
    return _UNSTORABLE.sub("\ufffd", text)


def clean_details(value, depth=0):
    """Return ``value`` fit for the log: secret keys dropped, strings and nesting cut short."""
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            return "…"
        return {
            storable(str(key)[:64]): clean_details(item, depth + 1)
            for key, item in value.items()
            if not _is_secret(key)
        }
    if isinstance(value, list | tuple):
        if depth >= MAX_DEPTH:
            return "…"
        return [clean_details(item, depth + 1) for item in list(value)[:50]]
    if value is None or isinstance(value, bool | int | float):
        return value
    return storable(str(value)[:MAX_STRING])


def details_json(details):
    """Return ``details`` as the JSON text stored in the log, within its size limit."""
    text = json.dumps(clean_details(details or {}), ensure_ascii=False, default=str)
    if len(text) > MAX_DETAILS:
        return json.dumps({"truncated": True, "size": len(text)})
    return text


class EventRecorder:
    """Queue event log rows and write them on a background thread.

    :param session_factory: the app's SQLAlchemy ``sessionmaker``.
    :param queue_size: how many rows may wait; more are dropped and counted in ``dropped``.
    """

    def __init__(self, session_factory, queue_size=QUEUE_SIZE):
        self.session_factory = session_factory
        self.queue = queue.Queue(maxsize=queue_size)
        self.dropped = 0
        self.written = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._thread = None
        self._last_drop_warning = 0.0
        self._domains = {}
        self._domains_read_at = 0.0

    def add(self, row):
        """Queue one row (a dict of the log's columns); drop it if the queue is full."""
        try:
            self.queue.put_nowait(row)
        except queue.Full:
            self._count_drop()
            return False
        self._ensure_writer()
        return True

    def flush(self, timeout=5.0):
        """Wait until every row queued so far is written (or failed); return False on timeout."""
        marker = _Flush()
        try:
            self.queue.put(marker, timeout=timeout)
        except queue.Full:
            return False
        self._ensure_writer()
        return marker.done.wait(timeout)

    def close(self, timeout=5.0):
        """Write what is queued and stop the writer."""
        with self._lock:
            thread = self._thread
        if thread is None:
            return
        try:
            self.queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return
        thread.join(timeout)

    def _count_drop(self):
        with self._lock:
            self.dropped += 1
            now = time.monotonic()
            if now - self._last_drop_warning < DROP_WARNING_INTERVAL:
                return
            self._last_drop_warning = now
            dropped = self.dropped
        log.warning("Event log queue is full: %d rows dropped so far", dropped)

    def _ensure_writer(self):
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(target=self._run, name="event-log-writer", daemon=True)
            self._thread.start()

    def _run(self):
        while True:
            try:
                first = self.queue.get(timeout=IDLE_EXIT)
            except queue.Empty:
                # Leave only if nothing arrived meanwhile: add() starts a writer after it puts.
                with self._lock:
                    if self.queue.empty():
                        self._thread = None
                        return
                continue
            if not self._handle_batch(first):
                with self._lock:
                    self._thread = None
                return

    def _handle_batch(self, first):
        """Write ``first`` and what follows it shortly; return False when told to stop."""
        rows, markers, keep_running = [], [], True
        item = first
        deadline = time.monotonic() + BATCH_WAIT
        while True:
            if item is _STOP:
                keep_running = False
                break
            if isinstance(item, _Flush):
                markers.append(item)
                break
            rows.append(item)
            if len(rows) >= BATCH_SIZE:
                break
            try:
                item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
        if not keep_running:
            # Write everything queued before the stop, then leave.
            while True:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, _Flush):
                    markers.append(item)
                elif item is not _STOP:
                    rows.append(item)
        if rows:
            self._write(rows)
        for marker in markers:
            marker.done.set()
        return keep_running

    def _write(self, rows):
        try:
            self._fill_domains(rows)
            with self.session_factory.begin() as session:
                session.execute(insert(EventLogEntry), rows)
            self.written += len(rows)
        except Exception as exc:
            self.failed += len(rows)
            log.warning(
                "Event log: %d rows could not be written (%s)", len(rows), type(exc).__name__
            )

    def _fill_domains(self, rows):
        """Give rows that name only a portal its domain, from the portals the app stores."""
        wanted = {row["member_id"] for row in rows if row["member_id"] and not row["domain"]}
        if not wanted:
            return
        now = time.monotonic()
        if now - self._domains_read_at > DOMAIN_CACHE_SECONDS:
            self._domains, self._domains_read_at = {}, now
        missing = wanted - self._domains.keys()
        if missing:
            with self.session_factory() as session:
                found = session.execute(
                    select(Portal.member_id, Portal.domain).where(Portal.member_id.in_(missing))
                )
                self._domains.update({member_id: domain for member_id, domain in found})
        for row in rows:
            if row["member_id"] and not row["domain"]:
                row["domain"] = self._domains.get(row["member_id"])


_recorders = weakref.WeakSet()


@atexit.register
def _close_all():
    for each in list(_recorders):
        each.close(timeout=2.0)


def init_app(app):
    """Give ``app`` its event recorder; call after the database is set up."""
    app.extensions["b24app.eventlog"] = EventRecorder(app.extensions["b24app.db"])
    _recorders.add(app.extensions["b24app.eventlog"])


def recorder():
    """Return the current app's :class:`EventRecorder`."""
    return current_app.extensions["b24app.eventlog"]


def record(kind, outcome, message, *, member_id=None, domain=None, duration_ms=None, details=None):
    """Queue one event log row for the current app; never block, never raise.

    :param kind: a :class:`Kind`; ``outcome``: an :class:`Outcome`.
    :param message: one short line for people; cut at 255 characters.
    :param details: a JSON-able dict; keys that may hold tokens or secrets are dropped.
    """
    try:
        if not has_app_context():
            log.debug("Event %s not logged: no app context", kind)
            return
        recorder().add(
            {
                "occurred_at": utcnow(),
                "member_id": storable(str(member_id)[:64]) if member_id else None,
                "domain": storable(str(domain)[:255]) if domain else None,
                "kind": kind,
                "outcome": outcome,
                # Error codes and descriptions in it may come from a portal.
                "message": storable(str(message)[:MAX_MESSAGE]),
                "duration_ms": float(duration_ms) if duration_ms is not None else None,
                "details": details_json(details),
            }
        )
    except Exception:
        log.warning("Event %s could not be queued for the log", kind, exc_info=True)


def flush(timeout=5.0):
    """Wait until the current app's queued rows are written; return False on timeout."""
    return recorder().flush(timeout)
