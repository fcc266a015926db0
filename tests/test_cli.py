"""The long-running commands, run as the processes a service manager starts and stops."""

import os
import signal
import socket
import subprocess
import sys

import pytest
from sqlalchemy import create_engine, select

from b24app import PROJECT_ROOT, create_app, migrations
from b24app.models import EventLogEntry
from tests.browser_helpers import wait_until


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def logged_kinds(url):
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return list(connection.scalars(select(EventLogEntry.kind).order_by(EventLogEntry.id)))
    finally:
        engine.dispose()


@pytest.mark.parametrize("command", [["scheduler"], ["serve", "--port", "PORT"]])
def test_sigterm_stops_the_command_cleanly_and_the_log_says_so(tmp_path, command):
    url = "sqlite:///" + str(tmp_path / "app.sqlite3")
    migrations.upgrade(url)
    port = str(free_port())
    environment = {
        **os.environ,
        "B24_INSTANCE_PATH": str(tmp_path),
        "DATABASE_URL": url,
        "B24_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "B24_SANDBOX_URL": f"http://localhost:{port}",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "wsgi"]
        + [port if part == "PORT" else part for part in command],
        cwd=PROJECT_ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def started():
        assert process.poll() is None, f"the command stopped: {process.stderr.read()}"
        return "scheduler_start" in logged_kinds(url)

    try:
        wait_until(started, 30, message="the scheduler to start")
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()

    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert logged_kinds(url)[-1] == "scheduler_stop"


@pytest.mark.parametrize(
    ("command", "url", "reason"),
    [
        (["db-upgrade"], "sqlite:///{tmp}/no/such/folder/app.sqlite3", "unable to open database"),
        (["serve"], "sqlite:///{tmp}/no/such/folder/app.sqlite3", "unable to open database"),
        (["scheduler"], "postgresql+psycopg://app:secret@127.0.0.1:1/app", "Connection refused"),
    ],
)
def test_a_database_out_of_reach_stops_the_command_with_one_line(tmp_path, command, url, reason):
    url = url.format(tmp=tmp_path)
    app = create_app({"DATABASE_URL": url})

    result = app.test_cli_runner().invoke(args=command)

    assert result.exit_code == 1
    [line] = result.output.strip().splitlines()
    assert line.startswith("Error: Cannot use the database at DATABASE_URL (OperationalError: ")
    assert reason in line
    assert "secret" not in line
