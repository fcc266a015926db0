"""Measure how the ping scheduler keeps up with many portals, and print the figures.

Run from the repository root::

    .venv/bin/python -m tests.benchmarks.ping_fanout --portals 50 --interval 1 --seconds 20

The app and the sandbox portal run in this process on a threaded werkzeug server on loopback,
as in the tests, on a fresh SQLite file (or, with ``--database-url``, in a new schema of a
PostgreSQL database, dropped afterwards). The portals are installed through the frame
handshake, then the app's scheduler runs for the given time. Nothing is asserted: the figures
depend on the machine, and are for comparing one change or one setting with another.
"""

import argparse
import bisect
import inspect
import logging
import math
import resource
import secrets
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from b24app import store
from b24app.scheduler import PING_JOB, PingScheduler
from tests.conftest import SETTINGS, LiveServer, install_portal

PROGRAM = "python -m tests.benchmarks.ping_fanout"
DEFAULT_WORKERS = inspect.signature(PingScheduler).parameters["max_workers"].default
# How long the sandbox may take to post the ONAPPINSTALL events of all portals.
EVENT_DELIVERY_TIMEOUT = 60.0


class BenchmarkError(Exception):
    """The benchmark cannot run as asked; the message says why in one line."""


class OneLineParser(argparse.ArgumentParser):
    """An argument parser that reports a bad command line in one line."""

    def error(self, message):
        """Print ``message`` as a single line and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def whole_number(value):
    """Return ``value`` as an integer of at least 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def seconds(value):
    """Return ``value`` as a positive, finite number of seconds."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {value!r}")
    return number


def parse_arguments(argv=None):
    """Return the benchmark's settings read from ``argv``.

    :raise SystemExit: with status 2 and a one-line message for a bad command line.
    """
    parser = OneLineParser(prog=PROGRAM, description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--portals", type=whole_number, default=50, help="portals to install; default: 50"
    )
    parser.add_argument(
        "--interval", type=seconds, default=1.0, help="PING_INTERVAL in seconds; default: 1"
    )
    parser.add_argument(
        "--seconds", type=seconds, default=20.0, help="how long the scheduler runs; default: 20"
    )
    parser.add_argument(
        "--workers",
        type=whole_number,
        default=DEFAULT_WORKERS,
        help=f"the scheduler's pool size; default: {DEFAULT_WORKERS}, as the app runs it",
    )
    parser.add_argument(
        "--database-url",
        help="run on this PostgreSQL database, in a new schema that is dropped afterwards "
        "(e.g. postgresql+psycopg://postgres@127.0.0.1:5432/postgres); default: a SQLite file",
    )
    arguments = parser.parse_args(argv)

    if arguments.seconds < arguments.interval:
        parser.error(
            f"--seconds ({arguments.seconds:g}) must be at least --interval "
            f"({arguments.interval:g}), so that the scheduler ticks at least once"
        )
    if arguments.database_url is not None:
        try:
            backend = make_url(arguments.database_url).get_backend_name()
        except ArgumentError:
            parser.error(f"--database-url is not a database URL: {arguments.database_url!r}")
        if backend != "postgresql":
            parser.error(
                "--database-url must be a PostgreSQL URL (postgresql+psycopg://...); "
                "without it the benchmark runs on a SQLite file"
            )
    return arguments


@contextmanager
def postgres_schema(database_url):
    """Yield ``database_url`` bound to a new, empty schema; drop the schema afterwards.

    :raise BenchmarkError: when the database cannot be reached or the schema not created.
    """
    url = make_url(database_url)
    schema = "ping_fanout_" + secrets.token_hex(4)
    admin = None
    try:
        admin = create_engine(url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    except (SQLAlchemyError, ImportError) as exc:
        if admin is not None:
            admin.dispose()
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise BenchmarkError(f"cannot create a schema at --database-url: {reason}") from None

    # Every connection, the migrations' and the app's, then sees the new schema only.
    scoped = url.update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield scoped.render_as_string(hide_password=False)
    finally:
        try:
            with admin.connect() as connection:
                connection.execute(text("SET lock_timeout = '10s'"))
                connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        except SQLAlchemyError as exc:
            print(f"warning: schema {schema} was left behind: {exc}", file=sys.stderr)
        admin.dispose()


def configure_logging():
    """Print warnings and errors on stderr, and nothing for each request."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # With a root handler in place, the app factory leaves logging as it is set here.
    logging.getLogger().addHandler(handler)
    # werkzeug logs every request at INFO: thousands of records that cost time and say nothing.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)


class SchedulerLog(logging.Handler):
    """Count the scheduler's log records by level, and the pings it skipped as under way."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.by_level = {}
        self.skipped = 0

    def emit(self, record):
        """Count one record."""
        self.by_level[record.levelname] = self.by_level.get(record.levelname, 0) + 1
        if "previous ping still under way" in str(record.msg):
            self.skipped += 1


class RecordingScheduler(PingScheduler):
    """The app's ping scheduler, noting when its first tick is due and when each tick ran."""

    def __init__(self, app, max_workers):
        super().__init__(app, max_workers=max_workers)
        self.first_run = None
        self.ticks = []

    def start(self):
        """Start as the app's scheduler does and note when the first tick is due; return self."""
        super().start()
        self.first_run = self._scheduler.get_job(PING_JOB).next_run_time.timestamp()
        return self

    def tick(self):
        """Run the app's tick and note its start and end."""
        started = time.time()
        try:
            super().tick()
        finally:
            self.ticks.append((started, time.time()))


class PushClock:
    """Note when the sandbox's push server sends each message, by its ``mid``.

    A :class:`~b24app.sandbox.state.PushedMessage` records no time of its own, so ``push`` is
    wrapped on this one sandbox.
    """

    def __init__(self, sandbox):
        self.pushed_at = {}
        self._push = sandbox.push
        sandbox.push = self.push

    def push(self, *args, **kwargs):
        """Push as the sandbox does and note the time."""
        records = self._push(*args, **kwargs)
        now = time.time()
        for record in records:
            self.pushed_at[record.mid] = now
        return records


def cpu_seconds():
    """Return the CPU time this process has used so far, user and system, in seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib():
    """Return this process's peak resident set size so far, in MiB."""
    # Linux gives ru_maxrss in KiB; macOS would give bytes.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def install_portals(server, count):
    """Install ``count`` sandbox portals and wait until their ONAPPINSTALL events are posted.

    :raise BenchmarkError: when not every portal ends up installed in the app's store.
    """
    portals = [install_portal(server) for _ in range(count)]
    bound = sum(
        handler.event == "ONAPPINSTALL"
        for portal in portals
        for handler in server.sandbox.bound_events(portal.member_id)
    )
    # Each event writes to the store as well; none may land in the measured run.
    delivered = server.sandbox.wait_for_event_deliveries(bound, EVENT_DELIVERY_TIMEOUT)
    if len(delivered) < bound:
        print(f"warning: {len(delivered)} of {bound} ONAPPINSTALL events posted", file=sys.stderr)
    with server.app.app_context():
        installed = len(store.pingable_portals())
    if installed != count:
        raise BenchmarkError(f"only {installed} of {count} portals are installed in the store")


@dataclass
class Run:
    """What one run of the benchmark measured."""

    arguments: argparse.Namespace
    database: str
    install_seconds: float
    install_rss: float
    planned_ticks: int
    first_run: float
    ticks: list
    drain_seconds: float
    run_seconds: float
    run_cpu_seconds: float
    pings: list
    pushed_at: dict
    log: SchedulerLog


def benchmark(arguments):
    """Start the app and sandbox, install the portals, run the scheduler; return the :class:`Run`.

    :raise BenchmarkError: when the database or the portals cannot be set up.
    """
    configure_logging()
    log = SchedulerLog()
    logging.getLogger("b24app.scheduler").addHandler(log)

    with ExitStack() as stack:
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="ping-fanout-"))
        monkeypatch = stack.enter_context(pytest.MonkeyPatch.context())
        # As the tests' clean_environment fixture: no settings from the shell or from .env.
        for name in SETTINGS:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setattr("b24app.load_dotenv", lambda *args, **kwargs: False)
        monkeypatch.setenv("B24_INSTANCE_PATH", f"{folder}/instance")
        # Skipped pings are counted from INFO records, and DEBUG ones would slow every ping.
        monkeypatch.setenv("LOG_LEVEL", "INFO")

        # The sandbox rewrites its whole state file on every change (each token it issues, each
        # push channel it opens): a cost of the stand-in portal, not of the app, so keep it off.
        test_config, database = {"SANDBOX_STATE_FILE": None}, "SQLite file in a temporary folder"
        # A short --interval pings faster than a cloud portal's rate limit drains; the bench
        # measures the scheduler, so the stand-in portal does not limit it.
        test_config["SANDBOX_RATE_LIMIT"] = 0
        if arguments.database_url:
            url = stack.enter_context(postgres_schema(arguments.database_url))
            test_config["DATABASE_URL"] = url
            server_url = make_url(url)
            database = f"PostgreSQL {server_url.host}:{server_url.port}/{server_url.database}"
        server = LiveServer(
            folder, monkeypatch, env={"PING_INTERVAL": arguments.interval}, test_config=test_config
        )
        stack.callback(server.stop)
        clock = PushClock(server.sandbox)

        install_started = time.monotonic()
        install_portals(server, arguments.portals)
        install_seconds = time.monotonic() - install_started
        install_rss = peak_rss_mib()

        planned = max(1, round(arguments.seconds / arguments.interval))
        started, cpu_before = time.monotonic(), cpu_seconds()
        scheduler = RecordingScheduler(server.app, arguments.workers).start()
        try:
            # Stop half an interval after the last planned tick: as far from any tick as can be.
            stop_at = scheduler.first_run + (planned - 0.5) * arguments.interval
            time.sleep(max(0.0, stop_at - time.time()))
        finally:
            stopping = time.monotonic()
            scheduler.shutdown()
            drain_seconds = time.monotonic() - stopping
        run_seconds, run_cpu_seconds = time.monotonic() - started, cpu_seconds() - cpu_before

        pings = [
            message for message in server.sandbox.pushed_messages if message.command == "ping"
        ]
        return Run(
            arguments=arguments,
            database=database,
            install_seconds=install_seconds,
            install_rss=install_rss,
            planned_ticks=planned,
            first_run=scheduler.first_run,
            ticks=sorted(scheduler.ticks),
            drain_seconds=drain_seconds,
            run_seconds=run_seconds,
            run_cpu_seconds=run_cpu_seconds,
            pings=pings,
            pushed_at=clock.pushed_at,
            log=log,
        )


def spread(values, scale=1.0, unit="s", digits=3):
    """Return the median, 95th percentile and maximum of ``values`` (times ``scale``) in words."""
    if not values:
        return "n/a"
    ordered = sorted(value * scale for value in values)
    # Nearest rank: the smallest value with at least 95% of all values at or below it.
    p95 = ordered[math.ceil(0.95 * len(ordered)) - 1]
    return (
        f"median {statistics.median(ordered):.{digits}f} {unit}, "
        f"p95 {p95:.{digits}f} {unit}, max {ordered[-1]:.{digits}f} {unit}"
    )


def send_gaps(pings):
    """Return the times between consecutive pings to the same portal, by their ``sent_at``."""
    by_portal = {}
    for ping in pings:
        by_portal.setdefault(ping.member_id, []).append(ping.params)
    gaps = []
    for sent in by_portal.values():
        sent.sort(key=lambda params: params["sequence"])
        gaps.extend(
            later["sent_at"] - earlier["sent_at"]
            for earlier, later in zip(sent, sent[1:], strict=False)
        )
    return gaps


def fan_outs(run):
    """Return, per tick, the time from its start to the last push of a ping it sent.

    A ping belongs to the last tick that started before its ``sent_at``; when pings are still
    being sent as the next tick starts, that tick is overloaded and its figure is a lower bound.
    """
    starts = [start for start, _ in run.ticks]
    last_push = {}
    for ping in run.pings:
        index = bisect.bisect_right(starts, ping.params["sent_at"]) - 1
        if index >= 0:
            tick = starts[index]
            last_push[tick] = max(last_push.get(tick, tick), run.pushed_at[ping.mid])
    return [push - tick for tick, push in last_push.items()]


def print_figures(run):
    """Print the figures of ``run``, one per line."""
    arguments = run.arguments
    interval = arguments.interval
    duration = run.planned_ticks * interval
    expected = run.planned_ticks * arguments.portals
    sent = len(run.pings)
    # How late each tick started after the moment the scheduler had planned for it.
    delays = [
        start - (run.first_run + round((start - run.first_run) / interval) * interval)
        for start, _ in run.ticks
    ]
    latencies = [run.pushed_at[ping.mid] - ping.params["sent_at"] for ping in run.pings]
    warnings = run.log.by_level.get("WARNING", 0)
    errors = run.log.by_level.get("ERROR", 0) + run.log.by_level.get("CRITICAL", 0)

    rows = [
        ("portals", f"{arguments.portals} (installed in {run.install_seconds:.1f} s)"),
        ("interval", f"{interval:g} s"),
        ("duration", f"{duration:g} s ({run.planned_ticks} planned ticks)"),
        ("database", run.database),
        ("pool workers", str(arguments.workers)),
        ("ticks", f"{len(run.ticks)} run, {max(0, run.planned_ticks - len(run.ticks))} missed"),
        ("tick start delay", spread(delays, 1000, "ms", 1)),
        ("tick duration", spread([end - start for start, end in run.ticks], 1000, "ms", 1)),
        ("tick fan-out", spread(fan_outs(run), 1000, "ms", 1)),
        ("pings", f"{sent} sent of {expected} expected ({100 * sent / expected:.1f}%)"),
        ("pings skipped", f"{run.log.skipped} (previous ping to the portal still under way)"),
        ("pings/s", f"{sent / duration:.1f} sent, {arguments.portals / interval:.1f} asked for"),
        ("send gap per portal", spread(send_gaps(run.pings))),
        ("sent_at to push", spread(latencies, 1000, "ms", 1)),
        ("drain after stop", f"{run.drain_seconds:.2f} s"),
        (
            "CPU, app + sandbox",
            f"{run.run_cpu_seconds:.1f} s in {run.run_seconds:.1f} s of running "
            f"({100 * run.run_cpu_seconds / run.run_seconds:.0f}% of one core), "
            + (f"{1000 * run.run_cpu_seconds / sent:.1f} ms per ping" if sent else "no pings"),
        ),
        ("failures", f"{warnings} warnings, {errors} errors logged by b24app.scheduler"),
        ("peak RSS", f"{run.install_rss:.0f} MiB after install, {peak_rss_mib():.0f} MiB at end"),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


def main(argv=None):
    """Run the benchmark from the command line; return the exit status."""
    arguments = parse_arguments(argv)
    try:
        run = benchmark(arguments)
    except BenchmarkError as exc:
        print(f"{PROGRAM}: error: {exc}", file=sys.stderr)
        return 1
    print_figures(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
