"""Reading the event log back: filters, keyset paging newest first, and rows for the live tail.

Pages are keyed on ``(occurred_at, id)``, never on an offset: the next page starts strictly
before the last row shown, so a deep page costs what the first does, and rows written meanwhile
neither repeat nor hide rows on the pages after the first. Each filter the page offers has an
index ending in ``(occurred_at, id)`` (see :class:`~b24app.models.EventLogEntry`).
"""

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, or_, select

from b24app.db import reading
from b24app.eventlog.recorder import KINDS, OUTCOMES, storable
from b24app.models import EventLogEntry

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_SEARCH = 100
EXPORT_BATCH = 1000
_CURSOR = re.compile(r"([0-9]{1,17})_([0-9]{1,19})")
# Row ids are 64-bit signed integers on every database.
MAX_ROW_ID = 2**63 - 1
_MEMBER_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class FilterError(ValueError):
    """A query parameter is malformed; the message says which and what is expected."""


@dataclass(frozen=True)
class EventFilter:
    """Which rows to show; ``None`` or an empty tuple means no restriction.

    ``member_id`` is the portal to show; ``kinds`` and ``outcomes`` match any of their values;
    ``since`` is inclusive and ``until`` exclusive; ``text`` is searched in the message, the
    domain, the member_id and the details.
    """

    member_id: str | None = None
    kinds: tuple = ()
    outcomes: tuple = ()
    since: datetime | None = None
    until: datetime | None = None
    text: str | None = None

    def restricted_to(self, member_id):
        """Return this filter limited to the portal ``member_id``."""
        return EventFilter(member_id, self.kinds, self.outcomes, self.since, self.until, self.text)

    def as_json(self):
        """Return the filter as the query parameters that describe it."""
        return {
            "member_id": self.member_id,
            "kind": list(self.kinds),
            "outcome": list(self.outcomes),
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "q": self.text,
        }


def _choices(values, allowed, name):
    chosen = []
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            if part not in allowed:
                raise FilterError(f"{name} must be one of {', '.join(allowed)}; got {part!r}.")
            if part not in chosen:
                chosen.append(part)
    return tuple(chosen)


def parse_time(value, name):
    """Return the ISO 8601 time ``value`` (with a UTC offset) as an aware UTC datetime.

    :raise FilterError: when it is not such a time.
    """
    try:
        parsed = datetime.fromisoformat(str(value).strip())
    except ValueError:
        raise FilterError(
            f"{name} must be an ISO 8601 time with an offset, e.g. 2025-01-31T12:00:00Z."
        ) from None
    if parsed.tzinfo is None:
        raise FilterError(f"{name} needs a UTC offset (Z or +hh:mm), got {value!r}.")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        # The first or the last day of the calendar, with an offset that leaves it.
        raise FilterError(f"{name} is out of range, got {value!r}.") from None


def parse_filter(args):
    """Return the :class:`EventFilter` in request arguments (a Werkzeug ``MultiDict`` or dict).

    Arguments: ``member_id``, ``kind`` and ``outcome`` (repeated or comma-separated),
    ``since``, ``until`` and ``q``.

    :raise FilterError: naming the first malformed argument.
    """
    get_list = args.getlist if hasattr(args, "getlist") else lambda key: _as_list(args.get(key))
    member_id = (args.get("member_id") or "").strip() or None
    if member_id and not _MEMBER_ID.fullmatch(member_id):
        raise FilterError("member_id is malformed.")
    since = parse_time(args["since"], "since") if args.get("since") else None
    until = parse_time(args["until"], "until") if args.get("until") else None
    if since and until and since >= until:
        raise FilterError("since must be earlier than until.")
    text = (args.get("q") or "").strip() or None
    if text and len(text) > MAX_SEARCH:
        raise FilterError(f"q may be at most {MAX_SEARCH} characters long.")
    if text and storable(text) != text:
        raise FilterError("q must be text without NUL characters.")
    return EventFilter(
        member_id=member_id,
        kinds=_choices(get_list("kind"), KINDS, "kind"),
        outcomes=_choices(get_list("outcome"), OUTCOMES, "outcome"),
        since=since,
        until=until,
        text=text,
    )


def _as_list(value):
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def parse_limit(value, default=DEFAULT_LIMIT):
    """Return the page size in ``value``.

    :raise FilterError: unless it is a whole number from 1 to ``MAX_LIMIT``.
    """
    if value in (None, ""):
        return default
    try:
        limit = int(str(value))
    except ValueError:
        raise FilterError(f"limit must be a whole number from 1 to {MAX_LIMIT}.") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise FilterError(f"limit must be a whole number from 1 to {MAX_LIMIT}.")
    return limit


def encode_cursor(row):
    """Return the cursor that pages on from ``row``: ``<microseconds since 1970>_<id>``."""
    delta = row.occurred_at - _EPOCH
    microseconds = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    return f"{microseconds}_{row.id}"


def decode_cursor(cursor):
    """Return the ``(occurred_at, id)`` of a cursor.

    :raise FilterError: when the cursor is not one that :func:`encode_cursor` makes.
    """
    match = _CURSOR.fullmatch(str(cursor))
    if not match or int(match.group(2)) > MAX_ROW_ID:
        raise FilterError("before must be a cursor from the previous page's next.")
    return _EPOCH + timedelta(microseconds=int(match.group(1))), int(match.group(2))


def _escape_like(text):
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _conditions(event_filter):
    entry = EventLogEntry
    conditions = []
    if event_filter.member_id:
        conditions.append(entry.member_id == event_filter.member_id)
    if event_filter.kinds:
        conditions.append(entry.kind.in_(event_filter.kinds))
    if event_filter.outcomes:
        conditions.append(entry.outcome.in_(event_filter.outcomes))
    if event_filter.since:
        conditions.append(entry.occurred_at >= event_filter.since)
    if event_filter.until:
        conditions.append(entry.occurred_at < event_filter.until)
    if event_filter.text:
        pattern = f"%{_escape_like(event_filter.text)}%"
        conditions.append(
            or_(
                *(
                    column.ilike(pattern, escape="\\")
                    for column in (entry.message, entry.domain, entry.member_id, entry.details)
                )
            )
        )
    return conditions


def _before(occurred_at, entry_id):
    # The plain range lets the database walk an index; the OR only trims rows of equal time.
    return and_(
        EventLogEntry.occurred_at <= occurred_at,
        or_(EventLogEntry.occurred_at < occurred_at, EventLogEntry.id < entry_id),
    )


def _newest_first(statement):
    return statement.order_by(EventLogEntry.occurred_at.desc(), EventLogEntry.id.desc())


def query_page(event_filter, limit=DEFAULT_LIMIT, before=None):
    """Return one page of rows newest first, and the cursor of the next page (or None).

    :param before: a cursor from a previous page's result; None for the newest rows.
    """
    statement = select(EventLogEntry).where(*_conditions(event_filter))
    if before:
        statement = statement.where(_before(*decode_cursor(before)))
    with reading() as session:
        rows = list(session.scalars(_newest_first(statement).limit(limit + 1)))
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


def iterate_rows(event_filter, batch=EXPORT_BATCH):
    """Yield every row the filter matches, newest first, reading a batch at a time."""
    before = None
    while True:
        rows, before = query_page(event_filter, limit=batch, before=before)
        yield from rows
        if before is None:
            return


def rows_after(event_filter, after_id, limit=MAX_LIMIT):
    """Return rows with an id above ``after_id``, oldest first: what the live tail has not sent."""
    statement = (
        select(EventLogEntry)
        .where(*_conditions(event_filter), EventLogEntry.id > after_id)
        .order_by(EventLogEntry.id)
        .limit(limit)
    )
    with reading() as session:
        return list(session.scalars(statement))


def newest_id():
    """Return the highest row id in the log, or 0 when it is empty."""
    with reading() as session:
        return session.scalar(_newest_id_statement()) or 0


def _newest_id_statement():
    return select(EventLogEntry.id).order_by(EventLogEntry.id.desc()).limit(1)


def row_as_json(row):
    """Return a row as the admin page and the JSON export show it."""
    try:
        details = json.loads(row.details or "{}")
    except ValueError:
        details = {}
    return {
        "id": row.id,
        "occurred_at": row.occurred_at.isoformat(),
        "member_id": row.member_id,
        "domain": row.domain,
        "kind": row.kind,
        "outcome": row.outcome,
        "message": row.message,
        "duration_ms": row.duration_ms,
        "details": details,
        "cursor": encode_cursor(row),
    }
