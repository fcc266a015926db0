"""The event log: one row per thing that happened to the app or a portal, for the admin page.

``record(kind, outcome, message, …)`` is all the rest of the app needs; it never blocks and
never raises (see :mod:`~b24app.eventlog.recorder`). :mod:`~b24app.eventlog.queries` reads the
log back with filters and keyset paging, :mod:`~b24app.eventlog.summary` sums up each portal's
pings, and :mod:`~b24app.eventlog.pruning` deletes rows past the retention age.
"""

from b24app.eventlog import pruning
from b24app.eventlog.recorder import (
    KINDS,
    OUTCOMES,
    EventRecorder,
    Kind,
    Outcome,
    flush,
    init_app,
    record,
    recorder,
)
from b24app.eventlog.records import (
    record_ping_delivered,
    record_ping_failed,
    record_ping_sent,
    record_refresh,
    record_scheduler,
)

__all__ = [
    "KINDS",
    "OUTCOMES",
    "EventRecorder",
    "Kind",
    "Outcome",
    "flush",
    "init_app",
    "record",
    "pruning",
    "record_ping_delivered",
    "record_ping_failed",
    "record_ping_sent",
    "record_refresh",
    "record_scheduler",
    "recorder",
]
