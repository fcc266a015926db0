"""Each portal's state at a glance: install, tokens, access problems, the last hour's pings.

Statistics cover the ping rows of the last hour (``ping_send`` and ``ping_delivery``), read in one
query through the ``(kind, occurred_at)`` index and summed up here; percentiles are computed in
Python because SQLite has none.
"""

import math
import statistics
from datetime import timedelta

from sqlalchemy import select

from b24app.db import reading
from b24app.eventlog.recorder import Kind, Outcome
from b24app.models import EventLogEntry, InstallState, Portal, utcnow

WINDOW = timedelta(hours=1)
BUCKET = timedelta(minutes=1)


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
    with reading() as session:
        statement = select(Portal).order_by(Portal.domain, Portal.member_id)
        if member_id is not None:
            statement = statement.where(Portal.member_id == member_id)
        portals = list(session.scalars(statement))
        ping_rows = select(
            EventLogEntry.member_id,
            EventLogEntry.occurred_at,
            EventLogEntry.kind,
            EventLogEntry.outcome,
            EventLogEntry.duration_ms,
        ).where(
            EventLogEntry.kind.in_((Kind.PING_SEND, Kind.PING_DELIVERY)),
            EventLogEntry.occurred_at >= start,
            EventLogEntry.occurred_at <= now,
        )
        if member_id is not None:
            ping_rows = ping_rows.where(EventLogEntry.member_id == member_id)
        rows_by_portal = {}
        for row in session.execute(ping_rows):
            rows_by_portal.setdefault(row.member_id, []).append(row)
        summaries = []
        for portal in portals:
            summary = _summary(portal, rows_by_portal.get(portal.member_id, []), start)
            if summary["last_ping_delivered_at"] is None:
                # Older than the window: ask the (member_id, kind, occurred_at) index directly.
                summary["last_ping_delivered_at"] = _iso(
                    session.scalar(
                        select(EventLogEntry.occurred_at)
                        .where(
                            EventLogEntry.member_id == portal.member_id,
                            EventLogEntry.kind == Kind.PING_DELIVERY,
                        )
                        .order_by(EventLogEntry.occurred_at.desc())
                        .limit(1)
                    )
                )
            summaries.append(summary)
    return summaries


def _summary(portal, rows, start):
    sent = failed = 0
    delays = []
    last_delivered = None
    buckets = [{"sent": 0, "failed": 0, "delays": []} for _ in range(int(WINDOW / BUCKET))]
    for row in rows:
        index = min(len(buckets) - 1, int((row.occurred_at - start) / BUCKET))
        if row.kind == Kind.PING_SEND:
            if row.outcome == Outcome.OK:
                sent += 1
                buckets[index]["sent"] += 1
            else:
                failed += 1
                buckets[index]["failed"] += 1
        elif row.duration_ms is not None:
            delays.append(row.duration_ms)
            buckets[index]["delays"].append(row.duration_ms)
            if last_delivered is None or row.occurred_at > last_delivered:
                last_delivered = row.occurred_at
    delays.sort()
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
                "sent": bucket["sent"],
                "failed": bucket["failed"],
                "delay_median_ms": _rounded(
                    statistics.median(bucket["delays"]) if bucket["delays"] else None
                ),
            }
            for index, bucket in enumerate(buckets)
        ],
    }
