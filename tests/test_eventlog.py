"""The event log on SQLite and PostgreSQL: recording, filters, keyset paging, summary, pruning."""

import json
import logging
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, select, text
from werkzeug.datastructures import MultiDict

from b24app import eventlog
from b24app.db import reading, transaction
from b24app.eventlog import Kind, Outcome, pruning, queries, summary
from b24app.eventlog.queries import EventFilter, FilterError
from b24app.eventlog.recorder import EventRecorder
from b24app.models import EventLogEntry, InstallState, Portal
from tests.conftest import build_app

BASE = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def db_app(database_url, tmp_path):
    """Return an app on a fresh migrated database of each kind."""
    return build_app(tmp_path, {"DATABASE_URL": database_url})


def add_rows(app, rows):
    """Insert log rows directly (a list of dicts with at least occurred_at and kind)."""
    defaults = {
        "member_id": None,
        "domain": None,
        "outcome": Outcome.OK,
        "message": "",
        "duration_ms": None,
        "details": "{}",
    }
    with app.app_context(), transaction() as session:
        session.execute(insert(EventLogEntry), [{**defaults, **row} for row in rows])


def add_portal(app, member_id, domain, **values):
    with app.app_context(), transaction() as session:
        session.add(
            Portal(
                member_id=member_id,
                domain=domain,
                client_endpoint=f"https://{domain}/rest/",
                server_endpoint="https://oauth.example/rest/",
                install_state=InstallState.INSTALLED,
                refresh_token="r",
                ping_sequence=0,
                **values,
            )
        )


def all_ids(app):
    with app.app_context(), reading() as session:
        return set(session.scalars(select(EventLogEntry.id)))


def page_through(event_filter, limit):
    """Return the ids of every page in order, following the cursors."""
    pages, cursor = [], None
    while True:
        rows, cursor = queries.query_page(event_filter, limit=limit, before=cursor)
        pages.append([row.id for row in rows])
        if cursor is None:
            return pages


# Recording.


def test_recorded_rows_are_written_with_the_portals_domain_and_no_secrets(db_app):
    add_portal(db_app, "m1", "one.example")
    with db_app.app_context():
        eventlog.record(
            Kind.EVENT,
            Outcome.REFUSED,
            "ONAPPINSTALL: wrong token",
            member_id="m1",
            details={
                "event": "ONAPPINSTALL",
                "auth": {"access_token": "a-secret"},
                "nested": {"refresh_token": "r-secret", "REFRESH_ID": "x", "kept": 1},
                "client_secret": "s",
                "application_token": "t",
            },
        )
        assert eventlog.flush()
        with reading() as session:
            [row] = session.scalars(select(EventLogEntry))
    assert (row.member_id, row.domain, row.kind, row.outcome) == (
        "m1",
        "one.example",
        "event",
        "refused",
    )
    assert row.message == "ONAPPINSTALL: wrong token"
    assert json.loads(row.details) == {"event": "ONAPPINSTALL", "nested": {"kept": 1}}
    assert "secret" not in row.details


def test_text_no_database_can_store_is_replaced_and_loses_no_row(db_app):
    # A portal's error code is text from outside: NUL and lone surrogates must not make the
    # batch it is written in fail, losing the rows around it.
    with db_app.app_context():
        eventlog.record(Kind.PING_SEND, Outcome.OK, "before")
        eventlog.record(
            Kind.PING_SEND,
            Outcome.FAILED,
            "Ping failed: A\x00B\ud800C",
            member_id="m\x001",
            domain="d\x00.example",
            details={"error": "A\x00B\ud800C", "k\x00ey": ["\udfff"]},
        )
        eventlog.record(Kind.PING_SEND, Outcome.OK, "after")
        assert eventlog.flush()
        with reading() as session:
            rows = list(session.scalars(select(EventLogEntry).order_by(EventLogEntry.id)))
    assert [row.message for row in rows] == [
        "before",
        "Ping failed: A\ufffdB\ufffdC",
        "after",
    ]
    assert (rows[1].member_id, rows[1].domain) == ("m\ufffd1", "d\ufffd.example")
    assert json.loads(rows[1].details) == {"error": "A\ufffdB\ufffdC", "k\ufffdey": ["\ufffd"]}


def test_record_cuts_long_messages_and_details(app):
    with app.app_context():
        eventlog.record(Kind.EVENT, Outcome.OK, "m" * 1000, details={"text": "x" * 10_000})
        eventlog.flush()
        with reading() as session:
            row = session.scalar(select(EventLogEntry))
    assert len(row.message) == 255
    assert len(json.loads(row.details)["text"]) == 500


def test_record_outside_an_app_context_does_nothing_and_raises_nothing():
    eventlog.record(Kind.EVENT, Outcome.OK, "nowhere to go")


def test_a_failing_database_never_reaches_the_caller(app, caplog):
    with app.app_context():
        with transaction() as session:
            session.execute(text("DROP TABLE event_log"))
        caplog.set_level(logging.WARNING, logger="b24app.eventlog")

        eventlog.record(Kind.PING_SEND, Outcome.OK, "ping", member_id="m1")
        assert eventlog.flush()

        assert eventlog.recorder().failed == 1
        assert eventlog.recorder().written == 0
    assert "1 rows could not be written (OperationalError)" in caplog.text


def test_a_full_queue_drops_rows_and_counts_them_without_waiting(app, caplog):
    caplog.set_level(logging.WARNING, logger="b24app.eventlog")
    recorder = EventRecorder(app.extensions["b24app.db"], queue_size=3)
    # Hold the writer up in the domain lookup of its first row so that the queue fills.
    writing = threading.Event()
    blocked = threading.Event()
    original = recorder._fill_domains

    def slow_fill(rows):
        writing.set()
        blocked.wait(5)
        original(rows)

    recorder._fill_domains = slow_fill
    row = {
        "occurred_at": BASE,
        "member_id": None,
        "domain": None,
        "kind": "event",
        "outcome": "ok",
        "message": "",
        "duration_ms": None,
        "details": "{}",
    }
    assert recorder.add(dict(row))
    assert writing.wait(5)
    results = [recorder.add(dict(row)) for _ in range(20)]
    blocked.set()

    assert results.count(True) == 3
    assert recorder.dropped == 17
    assert recorder.flush()
    assert recorder.written == 4
    assert "Event log queue is full" in caplog.text


def test_close_writes_what_is_queued(app):
    recorder = app.extensions["b24app.eventlog"]
    with app.app_context():
        for number in range(5):
            eventlog.record(Kind.EVENT, Outcome.OK, f"row {number}")
    recorder.close()
    assert recorder.written == 5
    assert len(all_ids(app)) == 5


# Filters.


@pytest.fixture
def filled(db_app):
    add_rows(
        db_app,
        [
            {"occurred_at": BASE, "member_id": "m1", "kind": "ping_send", "message": "Ping 1"},
            {
                "occurred_at": BASE + timedelta(minutes=1),
                "member_id": "m1",
                "kind": "ping_send",
                "outcome": "failed",
                "message": "Ping failed: QUERY_LIMIT_EXCEEDED",
            },
            {
                "occurred_at": BASE + timedelta(minutes=2),
                "member_id": "m2",
                "domain": "two.example",
                "kind": "event",
                "outcome": "refused",
                "message": "ONAPPUNINSTALL: wrong application_token",
                "details": '{"event": "ONAPPUNINSTALL"}',
            },
            {"occurred_at": BASE + timedelta(minutes=3), "kind": "scheduler_start"},
            {
                "occurred_at": BASE + timedelta(minutes=4),
                "member_id": "m2",
                "kind": "ping_send",
                "message": "100%_done",
            },
        ],
    )
    return db_app


def messages(event_filter):
    rows, _ = queries.query_page(event_filter, limit=50)
    return [row.message or row.kind for row in rows]


@pytest.mark.parametrize(
    ("event_filter", "expected"),
    [
        (
            EventFilter(),
            [
                "100%_done",
                "scheduler_start",
                "ONAPPUNINSTALL: wrong application_token",
                "Ping failed: QUERY_LIMIT_EXCEEDED",
                "Ping 1",
            ],
        ),
        (EventFilter(member_id="m1"), ["Ping failed: QUERY_LIMIT_EXCEEDED", "Ping 1"]),
        (
            EventFilter(kinds=("event", "scheduler_start")),
            ["scheduler_start", "ONAPPUNINSTALL: wrong application_token"],
        ),
        (
            EventFilter(outcomes=("failed", "refused")),
            ["ONAPPUNINSTALL: wrong application_token", "Ping failed: QUERY_LIMIT_EXCEEDED"],
        ),
        (
            EventFilter(member_id="m2", kinds=("ping_send",)),
            ["100%_done"],
        ),
        (
            EventFilter(since=BASE + timedelta(minutes=1), until=BASE + timedelta(minutes=3)),
            ["ONAPPUNINSTALL: wrong application_token", "Ping failed: QUERY_LIMIT_EXCEEDED"],
        ),
        # Case-insensitive, in the message, the domain and the details.
        (EventFilter(text="query_limit"), ["Ping failed: QUERY_LIMIT_EXCEEDED"]),
        (EventFilter(text="TWO.example"), ["ONAPPUNINSTALL: wrong application_token"]),
        (EventFilter(text='"event": "ONAPP'), ["ONAPPUNINSTALL: wrong application_token"]),
        # LIKE's wildcards are searched for literally.
        (EventFilter(text="100%_"), ["100%_done"]),
        (EventFilter(text="%"), ["100%_done"]),
        (EventFilter(text="nothing like it"), []),
    ],
)
def test_filters_select_the_matching_rows_newest_first(filled, event_filter, expected):
    with filled.app_context():
        assert messages(event_filter) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"kind": "pings"}, "kind must be one of"),
        ({"outcome": "bad"}, "outcome must be one of"),
        ({"since": "yesterday"}, "since must be an ISO 8601 time with an offset"),
        ({"until": "2025-03-01T12:00:00"}, "until needs a UTC offset"),
        ({"until": "9999-12-31T23:59:59-14:00"}, "until is out of range"),
        ({"since": "0001-01-01T00:00:00+14:00"}, "since is out of range"),
        (
            {"since": "2025-03-01T13:00:00Z", "until": "2025-03-01T12:00:00Z"},
            "since must be earlier than until.",
        ),
        ({"member_id": "a b"}, "member_id is malformed."),
        ({"q": "x" * 101}, "q may be at most 100 characters long."),
        ({"q": "a\x00b"}, "q must be text without NUL characters."),
        ({"q": "\ud800"}, "q must be text without NUL characters."),
    ],
)
def test_malformed_filters_are_refused_with_what_is_wrong(args, message):
    with pytest.raises(FilterError) as error:
        queries.parse_filter(MultiDict(args))
    assert message in str(error.value)


def test_filters_accept_repeated_and_comma_separated_values():
    parsed = queries.parse_filter(
        MultiDict([("kind", "event,ping_send"), ("kind", "event"), ("outcome", "failed")])
    )
    assert parsed.kinds == ("event", "ping_send")
    assert parsed.outcomes == ("failed",)


@pytest.mark.parametrize("cursor", ["", "abc", "1_", "_1", "1_2_3", "-1_2", "1" * 18 + "_1"])
def test_malformed_cursors_are_refused(cursor):
    with pytest.raises(FilterError):
        queries.decode_cursor(cursor)


# Keyset paging.


def test_paging_returns_every_row_once_in_order_even_with_equal_times(db_app):
    # Three rows share each time: the id must break the ties.
    add_rows(
        db_app,
        [
            {"occurred_at": BASE + timedelta(seconds=index // 3), "kind": "event"}
            for index in range(47)
        ],
    )
    with db_app.app_context():
        pages = page_through(EventFilter(), limit=10)
        with reading() as session:
            expected = list(
                session.scalars(
                    select(EventLogEntry.id).order_by(
                        EventLogEntry.occurred_at.desc(), EventLogEntry.id.desc()
                    )
                )
            )
    assert [len(page) for page in pages] == [10, 10, 10, 10, 7]
    assert [row_id for page in pages for row_id in page] == expected


def test_paging_is_stable_while_new_rows_arrive(db_app):
    add_rows(
        db_app,
        [
            {"occurred_at": BASE + timedelta(seconds=index), "kind": "event", "member_id": "m1"}
            for index in range(30)
        ],
    )
    original = all_ids(db_app)
    seen = []
    with db_app.app_context():
        event_filter = EventFilter(member_id="m1")
        rows, cursor = queries.query_page(event_filter, limit=7)
        seen += [row.id for row in rows]
        while cursor:
            # Newer rows written between pages must neither repeat nor push rows off a page.
            add_rows(
                db_app,
                [{"occurred_at": datetime.now(UTC), "kind": "event", "member_id": "m1"}],
            )
            rows, cursor = queries.query_page(event_filter, limit=7, before=cursor)
            seen += [row.id for row in rows]
    assert len(seen) == len(set(seen)) == 30
    assert set(seen) == original


def test_rows_after_gives_the_live_tail_new_rows_oldest_first(filled):
    with filled.app_context():
        first_id = min(all_ids(filled))
        rows = queries.rows_after(EventFilter(member_id="m2"), first_id)
        assert [row.message for row in rows] == [
            "ONAPPUNINSTALL: wrong application_token",
            "100%_done",
        ]
        assert queries.rows_after(EventFilter(), queries.newest_id()) == []


# Summary.


def test_summary_counts_the_last_hours_pings_and_delays(db_app):
    now = datetime.now(UTC)
    add_portal(
        db_app,
        "m1",
        "one.example",
        expires_at=now + timedelta(minutes=20),
        access_problem="needs_reauth",
        access_problem_detail="invalid_grant",
        backoff_failures=2,
        backoff_until=now + timedelta(minutes=5),
        last_ping_at=now - timedelta(seconds=1),
    )
    add_portal(db_app, "m2", "two.example")
    delays = [100.0, 200.0, 300.0, 400.0, 1000.0]
    rows = [
        {
            # All within one minute of the chart, counted from the window's start.
            "occurred_at": now - timedelta(minutes=2) + timedelta(seconds=10 + index),
            "member_id": "m1",
            "kind": "ping_delivery",
            "duration_ms": delay,
        }
        for index, delay in enumerate(delays)
    ]
    rows += [
        {"occurred_at": now - timedelta(minutes=3), "member_id": "m1", "kind": "ping_send"}
        for _ in range(3)
    ]
    rows.append(
        {
            "occurred_at": now - timedelta(minutes=10),
            "member_id": "m1",
            "kind": "ping_send",
            "outcome": "failed",
        }
    )
    # Outside the hour, and another portal's: neither counts.
    rows.append({"occurred_at": now - timedelta(hours=2), "member_id": "m1", "kind": "ping_send"})
    rows.append({"occurred_at": now, "member_id": "m2", "kind": "ping_send", "outcome": "failed"})
    add_rows(db_app, rows)

    with db_app.app_context():
        [one] = summary.portal_summaries("m1", now=now)
        both = summary.portal_summaries(now=now)

    assert [portal["member_id"] for portal in both] == ["m1", "m2"]
    assert one["pings_sent"] == 3
    assert one["pings_failed"] == 1
    assert one["success_rate"] == 0.75
    assert one["deliveries"] == 5
    assert one["delay_median_ms"] == 300.0
    assert one["delay_p95_ms"] == 1000.0
    assert one["access_problem"] == "needs_reauth"
    assert one["access_problem_detail"] == "invalid_grant"
    assert one["backoff_failures"] == 2
    assert datetime.fromisoformat(one["backoff_until"]) == (now + timedelta(minutes=5))
    assert datetime.fromisoformat(one["last_ping_delivered_at"]) == now - timedelta(
        minutes=2
    ) + timedelta(seconds=14)
    assert len(one["minutes"]) == 60
    assert sum(minute["failed"] for minute in one["minutes"]) == 1
    assert sum(minute["sent"] for minute in one["minutes"]) == 3
    assert [m["delay_median_ms"] for m in one["minutes"] if m["delay_median_ms"]] == [300.0]
    assert both[1]["pings_failed"] == 1 and both[1]["success_rate"] == 0.0


def test_summary_counts_each_ping_in_its_minute_of_the_chart(db_app):
    now = datetime.now(UTC)
    start = now - timedelta(hours=1)
    add_portal(db_app, "m1", "one.example")
    at = [
        start,
        start + timedelta(seconds=59.99),
        start + timedelta(seconds=60.01),
        start + timedelta(minutes=30, seconds=1),
        now,
    ]
    add_rows(db_app, [{"occurred_at": t, "member_id": "m1", "kind": "ping_send"} for t in at])
    add_rows(
        db_app,
        [
            {"occurred_at": t, "member_id": "m1", "kind": "ping_delivery", "duration_ms": delay}
            for t, delay in zip(at, [10.0, 30.0, 50.0, 70.0, 90.0], strict=True)
        ],
    )

    with db_app.app_context():
        [one] = summary.portal_summaries("m1", now=now)

    minutes = one["minutes"]
    assert [index for index, m in enumerate(minutes) if m["sent"]] == [0, 1, 30, 59]
    assert [m["sent"] for m in minutes if m["sent"]] == [2, 1, 1, 1]
    assert [m["delay_median_ms"] for m in minutes if m["sent"]] == [20.0, 50.0, 70.0, 90.0]
    assert datetime.fromisoformat(minutes[1]["start"]) == start + timedelta(minutes=1)
    assert (one["deliveries"], one["delay_median_ms"], one["delay_p95_ms"]) == (5, 50.0, 90.0)
    assert datetime.fromisoformat(one["last_ping_delivered_at"]) == now


def test_summary_finds_a_delivery_older_than_the_hour(db_app):
    now = datetime.now(UTC)
    add_portal(db_app, "m1", "one.example")
    add_rows(
        db_app,
        [
            {
                "occurred_at": now - timedelta(hours=5),
                "member_id": "m1",
                "kind": "ping_delivery",
                "duration_ms": 50.0,
            }
        ],
    )
    with db_app.app_context():
        [one] = summary.portal_summaries("m1", now=now)
    assert datetime.fromisoformat(one["last_ping_delivered_at"]) == now - timedelta(hours=5)
    assert one["deliveries"] == 0
    assert one["delay_median_ms"] is None
    assert one["success_rate"] is None


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [([], 0.5, None), ([7], 0.95, 7), (list(range(1, 101)), 0.95, 95), ([1, 2], 0.5, 1)],
)
def test_percentile_is_the_nearest_rank(values, fraction, expected):
    assert summary.percentile(values, fraction) == expected


# Pruning.


def test_pruning_deletes_only_rows_past_the_retention_age(db_app):
    now = datetime.now(UTC)
    db_app.config["EVENT_LOG_RETENTION_DAYS"] = 30
    add_rows(
        db_app,
        [{"occurred_at": now - timedelta(days=31 + index), "kind": "event"} for index in range(25)]
        + [{"occurred_at": now - timedelta(days=29), "kind": "event", "message": "kept"}],
    )
    with db_app.app_context():
        deleted = pruning.prune_expired(db_app)
        eventlog.flush()
        rows, _ = queries.query_page(EventFilter(), limit=50)

    assert deleted == 25
    assert [(row.kind, row.message) for row in rows] == [
        ("log_prune", "25 rows older than 30 days deleted"),
        ("event", "kept"),
    ]


def test_pruning_works_in_batches(db_app):
    add_rows(db_app, [{"occurred_at": BASE, "kind": "event"} for _ in range(25)])
    with db_app.app_context():
        assert pruning.prune(BASE + timedelta(seconds=1), batch=10) == 25
    assert all_ids(db_app) == set()


def test_the_prune_job_runs_once_per_hour_across_schedulers(db_app):
    now = datetime.now(UTC)
    add_rows(db_app, [{"occurred_at": now - timedelta(days=40), "kind": "event"}])
    pruning.prune_tick(db_app)
    add_rows(db_app, [{"occurred_at": now - timedelta(days=40), "kind": "event"}])
    # A second scheduler in the same hour finds the tick claimed.
    pruning.prune_tick(db_app)
    with db_app.app_context():
        eventlog.flush()
        with reading() as session:
            kinds = list(session.scalars(select(EventLogEntry.kind).order_by(EventLogEntry.id)))
    assert kinds == ["event", "log_prune"]


def test_a_retention_setting_must_be_positive(monkeypatch, tmp_path):
    from b24app import ConfigError, create_app

    monkeypatch.setenv("EVENT_LOG_RETENTION_DAYS", "0")
    with pytest.raises(ConfigError, match="EVENT_LOG_RETENTION_DAYS must be a positive number"):
        create_app()


def test_the_recorded_kinds_pass_the_filter():
    assert queries.parse_filter({"kind": ",".join(eventlog.KINDS)}).kinds == eventlog.KINDS
