"""Each portal's state at a glance: install, tokens, access problems, the last hour's pings.

Statistics cover the ping rows of the last hour (``ping_send`` and ``ping_delivery``), read
through the ``(kind, occurred_at)`` index. The database counts the sends per portal and minute;
the delays come back as bare numbers, since SQLite has no percentiles, and are summed up here.
"""

import math
import statistics
from collections import defaultdict
from datetime import timedelta

from sqlalchemy import Integer, bindparam, func, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement

from b24app.db import reading
from b24app.eventlog.recorder import Kind, Outcome
from b24app.models import EventLogEntry, InstallState, Portal, UTCDateTime, utcnow

WINDOW = timedelta(hours=1)
BUCKET = timedelta(minutes=1)
MINUTES = int(WINDOW / BUCKET)


class minutes_since(FunctionElement):  # noqa: N801 (an SQL function, named as one)
    """``minutes_since(later, earlier)``: the whole minutes from one time to the other."""

    type = Integer()
    inherit_cache = True


@compiles(minutes_since, "sqlite")
def _minutes_since_sqlite(element, compiler, **kw):
    later, earlier = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"CAST((julianday({later}) - julianday({earlier})) * 1440 AS INTEGER)"


@compiles(minutes_since, "postgresql")
def _minutes_since_postgresql(element, compiler, **kw):
    later, earlier = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"CAST(FLOOR(EXTRACT(EPOCH FROM ({later} - {earlier})) / 60) AS INTEGER)"


def percentile(values, fraction):
    """Return the nearest-rank percentile of ``values`` (sorted), or None when there are none."""
    if not values:
        return None
    rank = max(1, math.ceil(fraction * len(values)))
    return values[rank - 1]


def _rounded(value):
    return None if value is None else round(value, 1)


def _iso(value):
    return value.isoformat() if value else None


def portal_summaries(member_id=None, now=None):
    """Return the summary of every portal the app knows, or of ``member_id`` alone.

    :return: a list of dicts, one per portal, ordered by domain.
    """
    now = now or utcnow()
    start = now - WINDOW
    in_window = [EventLogEntry.occurred_at >= start, EventLogEntry.occurred_at <= now]
    portals = select(Portal).order_by(Portal.domain, Portal.member_id)
    if member_id is not None:
        portals = portals.where(Portal.member_id == member_id)
        in_window.append(EventLogEntry.member_id == member_id)
    minute = minutes_since(
        EventLogEntry.occurred_at, bindparam("window_start", start, type_=UTCDateTime)
    )
    pings = defaultdict(_Pings)
    with reading() as session:
        portals = list(session.scalars(portals))
        # Plain rows through the connection: the ORM's would cost more than the query.
        connection = session.connection()
        for portal_id, index, outcome, count in connection.execute(
            select(EventLogEntry.member_id, minute, EventLogEntry.outcome, func.count())
            .where(EventLogEntry.kind == Kind.PING_SEND, *in_window)
            .group_by(EventLogEntry.member_id, minute, EventLogEntry.outcome)
        ):
            pings[portal_id].add_sends(index, outcome, count)
        for portal_id, index, delay in connection.execute(
            select(EventLogEntry.member_id, minute, EventLogEntry.duration_ms).where(
                EventLogEntry.kind == Kind.PING_DELIVERY,
                EventLogEntry.duration_ms.is_not(None),
                *in_window,
            )
        ):
            pings[portal_id].add_delay(index, delay)
        summaries = []
        for portal in portals:
            # Through the (member_id, kind, occurred_at) index: one step per portal.
            last_delivered = session.scalar(
                select(EventLogEntry.occurred_at)
                .where(
                    EventLogEntry.member_id == portal.member_id,
                    EventLogEntry.kind == Kind.PING_DELIVERY,
                    EventLogEntry.occurred_at <= now,
                )
                .order_by(EventLogEntry.occurred_at.desc())
                .limit(1)
            )
            summaries.append(_summary(portal, pings[portal.member_id], start, last_delivered))
    return summaries


class _Pings:
    """One portal's pings of the window: sends counted, and delays, by minute."""

    def __init__(self):
        self.sent = [0] * MINUTES
        self.failed = [0] * MINUTES
        self.delays = [[] for _ in range(MINUTES)]

    def add_sends(self, index, outcome, count):
        # A row at the window's very end falls in its last minute.
        counts = self.sent if outcome == Outcome.OK else self.failed
        counts[min(index, MINUTES - 1)] += count

    def add_delay(self, index, delay):
        self.delays[min(index, MINUTES - 1)].append(delay)


def _summary(portal, pings, start, last_delivered):
    sent, failed = sum(pings.sent), sum(pings.failed)
    delays = sorted(delay for minute in pings.delays for delay in minute)
    attempts = sent + failed
    return {
        "member_id": portal.member_id,
        "domain": portal.domain,
        "install_state": portal.install_state,
        "installed": portal.install_state == InstallState.INSTALLED,
        "token_expires_at": _iso(portal.expires_at),
        "has_tokens": bool(portal.refresh_token),
        "access_problem": portal.access_problem,
        "access_problem_detail": portal.access_problem_detail,
        "access_problem_at": _iso(portal.access_problem_at),
        "backoff_failures": portal.backoff_failures or 0,
        "backoff_until": _iso(portal.backoff_until),
        "last_ping_sent_at": _iso(portal.last_ping_at),
        "last_ping_delivered_at": _iso(last_delivered),
        "pings_sent": sent,
        "pings_failed": failed,
        "success_rate": round(sent / attempts, 4) if attempts else None,
        "deliveries": len(delays),
        "delay_median_ms": _rounded(statistics.median(delays) if delays else None),
        "delay_p95_ms": _rounded(percentile(delays, 0.95)),
        "window_start": start.isoformat(),
        "minutes": [
            {
                "start": (start + BUCKET * index).isoformat(),
                "sent": pings.sent[index],
                "failed": pings.failed[index],
                "delay_median_ms": _rounded(
                    statistics.median(pings.delays[index]) if pings.delays[index] else None
                ),
            }
            for index in range(MINUTES)
        ],
    }
