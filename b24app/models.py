"""The stored state: the portals with the app, the scheduler's tick claims and the event log."""

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from b24app.encryption import EncryptedText


def utcnow():
    """Return the current time in UTC, timezone-aware."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC datetime on every database (SQLite stores it without a zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use an aware UTC datetime")
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime}


class InstallState:
    """Where a portal is in the app's lifecycle."""

    # Tokens stored from the install page; the portal has not confirmed installFinish yet.
    PENDING = "pending"
    INSTALLED = "installed"
    UNINSTALLED = "uninstalled"


class AccessProblem:
    """Why the app has no working access to a portal; it ends when the app is opened again."""

    # The tokens were refused for good (``invalid_grant``, ``NO_AUTH_FOUND`` after a refresh).
    NEEDS_REAUTH = "needs_reauth"
    PAYMENT_REQUIRED = "payment_required"
    PORTAL_DELETED = "portal_deleted"
    NOT_INSTALLED = "not_installed"
    # The portal redirects the app's calls (renamed) even at the address its OAuth server
    # gives; its new address comes with the next frame it opens.
    MOVED = "moved"


class Portal(Base):
    """A Bitrix24 portal (keyed by ``member_id``) with the OAuth tokens the app holds for it.

    The tokens are stored encrypted (:class:`~b24app.encryption.EncryptedText`) and read as
    plaintext.
    """

    __tablename__ = "portals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    member_id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    domain: Mapped[str] = mapped_column(String(255))
    client_endpoint: Mapped[str] = mapped_column(String(512))
    server_endpoint: Mapped[str] = mapped_column(String(512))
    access_token: Mapped[str | None] = mapped_column(EncryptedText)
    refresh_token: Mapped[str | None] = mapped_column(EncryptedText)
    expires_at: Mapped[datetime | None] = mapped_column()
    scope: Mapped[str] = mapped_column(String(1024), default="")
    status: Mapped[str] = mapped_column(String(8), default="")
    user_id: Mapped[int | None] = mapped_column(Integer)
    application_token: Mapped[str | None] = mapped_column(EncryptedText)
    install_state: Mapped[str] = mapped_column(String(16), default=InstallState.PENDING)
    ping_sequence: Mapped[int] = mapped_column(BigInteger, default=0)
    last_ping_at: Mapped[datetime | None] = mapped_column()
    installed_at: Mapped[datetime | None] = mapped_column()
    # Why the portal cannot be called until the app is opened there again (an AccessProblem),
    # with the error that said so and when.
    access_problem: Mapped[str | None] = mapped_column(String(32))
    access_problem_detail: Mapped[str | None] = mapped_column(String(255))
    access_problem_at: Mapped[datetime | None] = mapped_column()
    # Failures in a row that asked to wait (rate limits, outages), and until when to wait.
    backoff_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    backoff_until: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    def __repr__(self):
        return f"<Portal {self.member_id} {self.domain} {self.install_state}>"


class PingAcknowledgement(Base):
    """A ping that a user's app page acknowledged: each counts once, however often it is sent.

    Kept only while the ping's receipt is accepted (an hour), and gone with the portal's row.
    """

    __tablename__ = "ping_acknowledgements"

    member_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("portals.member_id", ondelete="CASCADE"), primary_key=True
    )
    sequence: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    # 0 for a page token that names no user.
    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    sent_at: Mapped[datetime] = mapped_column()


class SchedulerClaim(Base):
    """The last tick of a periodic job that some process has claimed; one row per job."""

    __tablename__ = "scheduler_claims"

    job: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_tick: Mapped[int] = mapped_column(BigInteger, default=0)
    claimed_by: Mapped[str] = mapped_column(String(128), default="")
    claimed_at: Mapped[datetime | None] = mapped_column()


class EventLogEntry(Base):
    """One thing that happened to the app or a portal: install, handshake, ping, event, …

    Rows are read newest first with keyset paging on ``(occurred_at, id)``; every index ends in
    those two columns so that each filter (portal, kind, outcome, portal and kind) pages through
    an index without sorting.
    """

    __tablename__ = "event_log"
    __table_args__ = (
        Index("ix_event_log_occurred", "occurred_at", "id"),
        Index("ix_event_log_member_occurred", "member_id", "occurred_at", "id"),
        Index("ix_event_log_kind_occurred", "kind", "occurred_at", "id"),
        Index("ix_event_log_outcome_occurred", "outcome", "occurred_at", "id"),
        Index("ix_event_log_member_kind_occurred", "member_id", "kind", "occurred_at", "id"),
    )

    # SQLite numbers rows only in an INTEGER PRIMARY KEY; elsewhere the log outgrows 32 bits.
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column()
    # Empty for what concerns no single portal (the scheduler starting, the log being pruned).
    member_id: Mapped[str | None] = mapped_column(String(64))
    domain: Mapped[str | None] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(String(255), default="")
    # A ping's send duration or delivery delay, kept as a column so that statistics need no JSON.
    duration_ms: Mapped[float | None] = mapped_column(Float)
    # A JSON object; never a token or secret (the recorder strips those keys).
    details: Mapped[str] = mapped_column(Text, default="{}")

    def __repr__(self):
        return f"<EventLogEntry {self.id} {self.kind} {self.outcome} {self.member_id}>"
