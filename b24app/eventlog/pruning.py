"""Retention: rows older than ``EVENT_LOG_RETENTION_DAYS`` are deleted by an hourly job.

A portal's rows also go when its admin uninstalls the app asking for its data to be deleted.

The job's ticks are claimed like the ping job's, so with several schedulers running only one of
them prunes each hour. Rows go in batches, each its own short transaction, so that pruning a
large backlog never holds a long lock over the writers.
"""

import logging
from datetime import timedelta

from sqlalchemy import delete, select

from b24app.db import transaction
from b24app.eventlog.recorder import Kind, Outcome, flush, record
from b24app.models import EventLogEntry, utcnow

log = logging.getLogger(__name__)

PRUNE_JOB = "event_log_prune"
PRUNE_INTERVAL = 3600.0
PRUNE_BATCH = 10_000


def prune(older_than, batch=PRUNE_BATCH):
    """Delete every row that occurred before ``older_than``; return how many were deleted."""
    return _delete_where(EventLogEntry.occurred_at < older_than, batch)


def forget_portal(member_id, batch=PRUNE_BATCH):
    """Delete every row about the portal, queued ones included; return how many were deleted."""
    flush()
    return _delete_where(EventLogEntry.member_id == member_id, batch)


def _delete_where(condition, batch):
    deleted = 0
    while True:
        with transaction() as session:
            ids = select(EventLogEntry.id).where(condition)
            count = session.execute(
                delete(EventLogEntry).where(
                    EventLogEntry.id.in_(ids.order_by(EventLogEntry.id).limit(batch))
                )
            ).rowcount
        deleted += count
        if count < batch:
            return deleted


def prune_expired(app):
    """Delete the rows of ``app``'s log that are past the retention age; return how many."""
    days = app.config["EVENT_LOG_RETENTION_DAYS"]
    cutoff = utcnow() - timedelta(days=days)
    deleted = prune(cutoff)
    if deleted:
        log.info("Event log: %d rows older than %s days deleted", deleted, days)
        record(
            Kind.LOG_PRUNE,
            Outcome.OK,
            f"{deleted} rows older than {days:g} days deleted",
            details={"deleted": deleted, "cutoff": cutoff.isoformat()},
        )
    return deleted


def prune_tick(app):
    """Claim this hour's prune and run it; the scheduler's job (one process prunes per hour)."""
    from b24app.scheduler import claim_tick, tick_start

    try:
        with app.app_context():
            if claim_tick(PRUNE_JOB, tick_start(PRUNE_INTERVAL)):
                prune_expired(app)
    except Exception:
        log.exception("Event log pruning failed")


def schedule(scheduler, app):
    """Add the hourly prune job of ``app`` to an APScheduler ``scheduler``."""
    scheduler.add_job(
        prune_tick,
        "interval",
        args=[app],
        seconds=PRUNE_INTERVAL,
        id=PRUNE_JOB,
        max_instances=1,
        coalesce=True,
        # Also at start: a scheduler restarted every half hour would otherwise never prune.
        next_run_time=utcnow() + timedelta(seconds=5),
    )
