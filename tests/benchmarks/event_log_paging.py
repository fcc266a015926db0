"""Measure the admin page's log queries on a large event log, and print the figures.

Run from the repository root::

    .venv/bin/python -m tests.benchmarks.event_log_paging --rows 1000000

It fills a fresh database (a SQLite file, or with ``--database-url`` a new database on that
PostgreSQL server, dropped afterwards) with rows spread over 100 portals and a few days, then
times the queries the admin page makes: the first page, a page half a million rows deep, each
filter, and for comparison the same deep page by OFFSET. Then it adds a busy last hour (a ping
and its delivery to each portal every second) and times the per-portal summary. Nothing is
asserted: the figures depend on the machine, and are for comparing one change with another.
"""

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from datetime import timedelta

from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from b24app import create_app, migrations
from b24app.db import reading, transaction
from b24app.eventlog import queries, summary
from b24app.eventlog.queries import EventFilter
from b24app.models import EventLogEntry, Portal, utcnow

PORTALS = 100
REPEATS = 5
PAGE = 50

# One row every :spacing milliseconds up to now, oldest first; about 1 % failures and 2 % events
# among pings.
SQLITE_FILL = """
INSERT INTO event_log
    (occurred_at, member_id, domain, kind, outcome, message, duration_ms, details)
WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < :rows)
SELECT
    strftime(
        '%Y-%m-%d %H:%M:%S', 'now', '-' || (((:rows - n) * :spacing + 999) / 1000) || ' seconds'
    ) || '.' || printf('%06d', (1000 - (:rows - n) * :spacing % 1000) % 1000 * 1000),
    'portal-' || (n % :portals),
    'portal-' || (n % :portals) || '.bitrix24.com',
    CASE WHEN n % 50 = 0 THEN 'event' WHEN n % 2 = 0 THEN 'ping_send' ELSE 'ping_delivery' END,
    CASE WHEN n % 100 = 0 THEN 'failed' ELSE 'ok' END,
    'Ping ' || n,
    n % 997,
    '{"sequence": ' || n || '}'
FROM seq
"""

POSTGRESQL_FILL = """
INSERT INTO event_log
    (occurred_at, member_id, domain, kind, outcome, message, duration_ms, details)
SELECT
    now() - (:rows - n) * :spacing * interval '1 millisecond',
    'portal-' || (n % :portals),
    'portal-' || (n % :portals) || '.bitrix24.com',
    CASE WHEN n % 50 = 0 THEN 'event' WHEN n % 2 = 0 THEN 'ping_send' ELSE 'ping_delivery' END,
    CASE WHEN n % 100 = 0 THEN 'failed' ELSE 'ok' END,
    'Ping ' || n,
    n % 997,
    '{"sequence": ' || n || '}'
FROM generate_series(1, :rows) AS n
"""

# The log's rows: one every quarter second, so a million reach back about 70 hours.
LOG_SPACING_MS = 250
# The busy hour of the summary: a ping and its delivery to each portal every second.
BUSY_SPACING_MS = 5


def timed(function, repeats=REPEATS):
    """Return the median and the slowest of ``repeats`` runs of ``function``, in milliseconds."""
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        runs.append((time.perf_counter() - started) * 1000)
    return statistics.median(runs), max(runs)


def fill(url, rows, spacing_ms):
    """Add ``rows`` rows, one every ``spacing_ms`` up to now, to the log at ``url``.

    :return: the seconds it took.
    """
    engine = create_engine(url)
    started = time.perf_counter()
    statement = POSTGRESQL_FILL if url.startswith("postgresql") else SQLITE_FILL
    with engine.begin() as connection:
        connection.execute(
            text(statement), {"rows": rows, "portals": PORTALS, "spacing": spacing_ms}
        )
    with engine.begin() as connection:
        connection.execute(text("ANALYZE"))
    engine.dispose()
    return time.perf_counter() - started


def deep_cursor(depth):
    """Return the cursor of the page that starts ``depth`` rows from the newest."""
    with reading() as session:
        row = session.scalar(
            select(EventLogEntry)
            .order_by(EventLogEntry.occurred_at.desc(), EventLogEntry.id.desc())
            .offset(depth - 1)
            .limit(1)
        )
    return queries.encode_cursor(row)


def by_offset(depth):
    """Read the page ``depth`` rows deep with OFFSET, the way keyset paging avoids."""
    with reading() as session:
        list(
            session.scalars(
                select(EventLogEntry)
                .order_by(EventLogEntry.occurred_at.desc(), EventLogEntry.id.desc())
                .offset(depth)
                .limit(PAGE)
            )
        )


def measure(rows):
    """Print the timing of each of the admin page's queries."""
    depth = rows // 2
    cursor = deep_cursor(depth)
    now = utcnow()
    cases = [
        ("first page, no filter", EventFilter(), None),
        (f"page {depth:,} rows deep", EventFilter(), cursor),
        ("first page, one portal", EventFilter(member_id="portal-7"), None),
        ("deep page, one portal", EventFilter(member_id="portal-7"), cursor),
        (
            "one portal, one kind",
            EventFilter(member_id="portal-7", kinds=("ping_delivery",)),
            None,
        ),
        ("outcome failed", EventFilter(outcomes=("failed",)), None),
        ("deep page, outcome failed", EventFilter(outcomes=("failed",)), cursor),
        ("kind event", EventFilter(kinds=("event",)), None),
        (
            "a 10-minute range a day ago",
            EventFilter(since=now - timedelta(days=1, minutes=10), until=now - timedelta(days=1)),
            None,
        ),
        ("text search, frequent", EventFilter(text="Ping 1"), None),
        ("text search, one match", EventFilter(text=f"Ping {rows // 3}"), None),
    ]
    print(f"{'query':<34} {'median ms':>10} {'slowest ms':>11} {'rows':>5}")
    for name, event_filter, before in cases:
        found = []

        def run(event_filter=event_filter, before=before, found=found):
            found[:] = queries.query_page(event_filter, limit=PAGE, before=before)[0]

        median, slowest = timed(run)
        print(f"{name:<34} {median:>10.1f} {slowest:>11.1f} {len(found):>5}")
    median, slowest = timed(lambda: by_offset(depth))
    print(f"{'same deep page by OFFSET':<34} {median:>10.1f} {slowest:>11.1f} {PAGE:>5}")


def measure_summary(url):
    """Add a busy hour to the log and print the timing of the admin page's summary."""
    rows = 3600 * 1000 // BUSY_SPACING_MS
    seconds = fill(url, rows, BUSY_SPACING_MS)
    print(f"\nsummary of a busy last hour: {rows:,} more rows in {seconds:.1f} s")
    with transaction() as session:
        session.add_all(
            Portal(
                member_id=f"portal-{number}",
                domain=f"portal-{number}.bitrix24.com",
                client_endpoint=f"https://portal-{number}.bitrix24.com/rest/",
                server_endpoint="https://oauth.bitrix24.tech/rest/",
            )
            for number in range(PORTALS)
        )
    print(f"{'summary':<34} {'median ms':>10} {'slowest ms':>11} {'rows':>5}")
    for name, member_id in [(f"every portal ({PORTALS})", None), ("one portal", "portal-7")]:
        found = []

        def run(member_id=member_id, found=found):
            found[:] = summary.portal_summaries(member_id)

        median, slowest = timed(run)
        print(f"{name:<34} {median:>10.1f} {slowest:>11.1f} {len(found):>5}")


def scratch_postgresql(url):
    """Create a new database on the server at ``url``; return its URL and a dropper."""
    server = create_engine(url, isolation_level="AUTOCOMMIT")
    name = "b24app_bench_" + secrets.token_hex(4)
    with server.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))

    def drop():
        with server.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        server.dispose()

    return make_url(url).set(database=name).render_as_string(hide_password=False), drop


def main(argv=None):
    """Fill a database, time the queries and print the figures."""
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.event_log_paging")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows to fill (1,000,000)")
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL server to create a scratch database on (default: a SQLite file)",
    )
    options = parser.parse_args(argv)
    if options.rows < 2 * PAGE:
        parser.error(f"--rows must be at least {2 * PAGE}")

    with tempfile.TemporaryDirectory() as folder:
        drop = None
        if options.database_url:
            url, drop = scratch_postgresql(options.database_url)
        else:
            url = "sqlite:///" + os.path.join(folder, "bench.sqlite3")
        try:
            migrations.upgrade(url)
            seconds = fill(url, options.rows, LOG_SPACING_MS)
            print(f"{make_url(url).get_backend_name()}: {options.rows:,} rows in {seconds:.1f} s")
            os.environ["B24_INSTANCE_PATH"] = folder
            app = create_app({"DATABASE_URL": url, "SCHEDULER_IN_SERVER": False})
            with app.app_context():
                measure(options.rows)
                measure_summary(url)
        finally:
            if drop:
                drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
