"""The rows other modules record, one function per step, so that each call site is one line."""

from b24app.eventlog.recorder import Kind, Outcome, record


def record_refresh(member_id, error_code=None):
    """Log a token refresh of the portal: done, or refused with the OAuth server's code."""
    if error_code is None:
        record(Kind.TOKEN_REFRESH, Outcome.OK, "Tokens refreshed", member_id=member_id)
    else:
        record(
            Kind.TOKEN_REFRESH,
            Outcome.FAILED,
            f"Refresh refused: {error_code}",
            member_id=member_id,
            details={"error": error_code},
        )


def record_ping_sent(member_id, sequence, sent_at, duration_ms):
    """Log a ping the portal accepted, with how long the REST call took."""
    record(
        Kind.PING_SEND,
        Outcome.OK,
        f"Ping {sequence} sent in {duration_ms:.0f} ms",
        member_id=member_id,
        duration_ms=duration_ms,
        details={"sequence": sequence, "sent_at": sent_at},
    )


def record_ping_failed(app, member_id, error_code, description):
    """Log a ping that failed, with the portal's (or our own) error code; needs no app context."""
    with app.app_context():
        record(
            Kind.PING_SEND,
            Outcome.FAILED,
            f"Ping failed: {error_code}",
            member_id=member_id,
            details={"error": error_code, "description": description},
        )


def record_ping_delivered(member_id, sequence, sent_at, delay_ms, user_id):
    """Log a ping that an open app page received, with its delay from the scheduler."""
    record(
        Kind.PING_DELIVERY,
        Outcome.OK,
        f"Ping {sequence} delivered to user {user_id} after {delay_ms:.0f} ms",
        member_id=member_id,
        duration_ms=delay_ms,
        details={"sequence": sequence, "sent_at": sent_at, "user_id": user_id},
    )


def record_scheduler(app, started, interval):
    """Log the ping scheduler starting or stopping; needs no app context."""
    with app.app_context():
        record(
            Kind.SCHEDULER_START if started else Kind.SCHEDULER_STOP,
            Outcome.OK,
            f"Scheduler {'started' if started else 'stopped'}, ping every {interval:g} s",
            details={"interval": interval},
        )
