import math
import multiprocessing
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.fernet import Fernet

from b24app import PROJECT_ROOT, create_app, migrations
from b24app.config import SANDBOX_CLIENT_ID, ConfigError, load_config


def test_defaults_run_in_sandbox_mode(app):
    assert app.config["SANDBOX"] is True
    assert app.config["B24_CLIENT_ID"] == SANDBOX_CLIENT_ID
    assert app.config["OAUTH_SERVER"] == "http://localhost:5000/oauth-server"
    assert app.config["PING_INTERVAL"] == 1.0
    assert app.config["PULL_MODULE_ID"] == "main"
    assert "sandbox" in app.extensions


def test_default_database_is_sqlite_in_instance_folder(tmp_path):
    app = create_app()
    assert app.config["DATABASE_URL"] == "sqlite:///" + str(
        tmp_path / "instance" / "b24app.sqlite3"
    )


def test_production_mode_needs_its_settings(monkeypatch):
    monkeypatch.setenv("B24_CLIENT_ID", "local.123.456")
    with pytest.raises(ConfigError) as error:
        create_app()
    message = str(error.value)
    assert "B24_CLIENT_SECRET" in message
    assert "SECRET_KEY" in message
    assert "B24_PUBLIC_URL" in message
    assert "TOKEN_ENCRYPTION_KEYS" in message


def test_production_mode_never_mounts_the_sandbox(monkeypatch):
    monkeypatch.setenv("B24_CLIENT_ID", "local.123.456")
    monkeypatch.setenv("B24_CLIENT_SECRET", "secret")
    monkeypatch.setenv("SECRET_KEY", "k" * 32)
    monkeypatch.setenv("B24_PUBLIC_URL", "https://app.example.com")
    monkeypatch.setenv("TOKEN_ENCRYPTION_KEYS", Fernet.generate_key().decode())
    app = create_app()
    assert app.config["SANDBOX"] is False
    assert app.config["OAUTH_SERVER"] == "https://oauth.bitrix.info"
    assert "sandbox" not in app.extensions
    client = app.test_client()
    for path in ("/rest/server.time", "/oauth-server/oauth/token/", "/portal/x/"):
        assert client.get(path, base_url="http://localhost:5000").status_code == 404


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PULL_MODULE_ID", "Main", "PULL_MODULE_ID may hold only lower-case"),
        ("PULL_MODULE_ID", "my-app", "PULL_MODULE_ID may hold only lower-case"),
        ("SCHEDULER_IN_SERVER", "maybe", "SCHEDULER_IN_SERVER must be true or false"),
    ],
)
def test_invalid_settings_are_refused(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        create_app()


# Every numeric setting: what it must be, a value just below its range and one just above.
NUMBER_RULES = {
    "PING_INTERVAL": ("a number of seconds from 0.05 to 86400", "0.049", "86401"),
    "REST_TIMEOUT": ("a positive number of seconds, at most 3600", "0", "3601"),
    "OAUTH_TIMEOUT": ("a positive number of seconds, at most 3600", "-1", "3600.5"),
    "REST_ATTEMPTS": ("a whole number from 1 to 10", "0", "11"),
    "BACKOFF_MAX": ("a positive number of seconds, at most 86400", "-0.1", "86401"),
    "PAGE_TOKEN_MAX_AGE": (
        "a positive number of seconds, at most 31536000 (a year)",
        "-1",
        "31536001",
    ),
    "ADMIN_TOKEN_MAX_AGE": ("a positive number of seconds, at most 31536000 (a year)", "0", "1e9"),
    "EVENT_LOG_RETENTION_DAYS": ("a positive number of days, at most 36500", "0", "36501"),
    "SANDBOX_ACCESS_TOKEN_LIFETIME": ("a number of seconds from 1 to 86400", "0.5", "86401"),
    "SANDBOX_REFRESH_TOKEN_LIFETIME": (
        "a number of seconds from -315360000 to 315360000 (10 years; 0 or less issues expired "
        "tokens)",
        "-315360001",
        "315360001",
    ),
    "SANDBOX_RATE_LIMIT": ("a whole number from 0 to 1000000 (0: no rate limit)", "-1", "1000001"),
    "SANDBOX_RATE_DRAIN": ("a number from 0 to 1000000 (0: no rate limit)", "-0.5", "1e7"),
}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (name, value)
        for name, (_, too_small, too_large) in NUMBER_RULES.items()
        for value in ("nan", "inf", "-inf", too_small, too_large, "soon")
    ]
    + [
        ("PING_INTERVAL", "1e-9"),
        ("PING_INTERVAL", "NaN"),
        ("REST_TIMEOUT", "Infinity"),
        ("EVENT_LOG_RETENTION_DAYS", "1e400"),
        ("REST_ATTEMPTS", "2.5"),
        ("SANDBOX_RATE_LIMIT", "2.5"),
    ],
)
def test_a_numeric_setting_must_be_a_finite_number_in_its_range(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as error:
        create_app()
    assert str(error.value) == f"{name} must be {NUMBER_RULES[name][0]}, got {value!r}."


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("PING_INTERVAL", "0.05", 0.05),
        ("PING_INTERVAL", "86400", 86400.0),
        ("REST_TIMEOUT", "3600", 3600.0),
        ("REST_ATTEMPTS", "1", 1),
        ("REST_ATTEMPTS", "10.0", 10),
        ("BACKOFF_MAX", "86400", 86400.0),
        ("PAGE_TOKEN_MAX_AGE", "31536000", 31536000.0),
        ("ADMIN_TOKEN_MAX_AGE", "0.5", 0.5),
        ("EVENT_LOG_RETENTION_DAYS", "36500", 36500.0),
        ("SANDBOX_ACCESS_TOKEN_LIFETIME", "1", 1.0),
        ("SANDBOX_REFRESH_TOKEN_LIFETIME", "-1", -1.0),
        ("SANDBOX_REFRESH_TOKEN_LIFETIME", "315360000", 315360000.0),
        ("SANDBOX_RATE_LIMIT", "0", 0),
        ("SANDBOX_RATE_DRAIN", "0", 0.0),
    ],
)
def test_a_numeric_setting_at_the_edge_of_its_range_is_accepted(
    monkeypatch, name, value, expected
):
    monkeypatch.setenv(name, value)
    setting = create_app().config[name]
    assert setting == expected
    assert type(setting) is type(expected)


def test_the_largest_settings_keep_the_apps_date_arithmetic_in_range(monkeypatch):
    monkeypatch.setenv("EVENT_LOG_RETENTION_DAYS", "36500")
    monkeypatch.setenv("ADMIN_TOKEN_MAX_AGE", "31536000")
    monkeypatch.setenv("PING_INTERVAL", "86400")
    config = create_app().config
    now = time.time()
    # As the pruning job, the admin page and the scheduler compute them.
    assert datetime.now(UTC) - timedelta(days=config["EVENT_LOG_RETENTION_DAYS"])
    assert datetime.fromtimestamp(now + config["ADMIN_TOKEN_MAX_AGE"], UTC)
    interval = config["PING_INTERVAL"]
    assert datetime.fromtimestamp((math.floor(now / interval) + 1.5) * interval, UTC)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LOG_LEVEL": "chatty"}, "LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR."),
        ({"B24_PUBLIC_URL": "notaurl"}, "B24_PUBLIC_URL must be an http(s) URL, got 'notaurl'."),
        ({"B24_SANDBOX_URL": "ftp://x"}, "B24_SANDBOX_URL must be an http(s) URL"),
        ({"DATABASE_URL": "foo://bar"}, "DATABASE_URL is not a usable database URL"),
        ({"DATABASE_URL": "not a url"}, "DATABASE_URL is not a usable database URL"),
    ],
)
def test_unusable_settings_are_refused_with_their_name(monkeypatch, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=re.escape(message)):
        create_app()


def production(monkeypatch, public_url):
    monkeypatch.setenv("B24_CLIENT_ID", "local.123.456")
    monkeypatch.setenv("B24_CLIENT_SECRET", "secret")
    monkeypatch.setenv("SECRET_KEY", "k" * 32)
    monkeypatch.setenv("B24_PUBLIC_URL", public_url)
    monkeypatch.setenv("TOKEN_ENCRYPTION_KEYS", Fernet.generate_key().decode())
    return create_app()


def test_production_needs_an_https_public_url(monkeypatch):
    with pytest.raises(ConfigError, match="B24_PUBLIC_URL must be an https URL"):
        production(monkeypatch, "http://app.example.com")


def test_production_on_loopback_may_use_http(monkeypatch):
    assert production(monkeypatch, "http://127.0.0.1:8000").config["SANDBOX"] is False


@pytest.mark.parametrize("value", ["soon", "nan", "inf"])
def test_a_bad_setting_stops_wsgi_with_a_message_and_no_traceback(tmp_path, value):
    environment = {**os.environ, "PING_INTERVAL": value, "B24_INSTANCE_PATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", "import wsgi"],
        cwd=PROJECT_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "b24app cannot start: PING_INTERVAL must be a number of seconds from 0.05 to 86400, "
        f"got {value!r}."
    )


def test_production_refuses_a_short_secret_key(monkeypatch):
    monkeypatch.setenv("B24_CLIENT_ID", "local.123.456")
    monkeypatch.setenv("B24_CLIENT_SECRET", "secret")
    monkeypatch.setenv("SECRET_KEY", "short")
    monkeypatch.setenv("B24_PUBLIC_URL", "https://app.example.com")
    monkeypatch.setenv("TOKEN_ENCRYPTION_KEYS", Fernet.generate_key().decode())
    with pytest.raises(ConfigError, match="SECRET_KEY must be at least 32 characters long."):
        create_app()


def test_the_sandbox_keeps_its_secret_key_across_restarts(tmp_path):
    first, second = create_app(), create_app()
    key_file = tmp_path / "instance" / "sandbox-secret-key"
    assert first.config["SECRET_KEY"] == second.config["SECRET_KEY"]
    assert key_file.read_text() == first.config["SECRET_KEY"]
    assert key_file.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("command", ["serve", "scheduler"])
def test_commands_refuse_to_run_on_an_unmigrated_database(tmp_path, command):
    app = create_app({"DATABASE_URL": "sqlite:///" + str(tmp_path / "empty.sqlite3")})
    result = app.test_cli_runner().invoke(args=[command])
    assert result.exit_code == 1
    assert "The database is not up to date: run `flask --app wsgi db-upgrade` first." in (
        result.output
    )


def test_db_upgrade_brings_the_database_up_to_date(tmp_path):
    url = "sqlite:///" + str(tmp_path / "fresh.sqlite3")
    app = create_app({"DATABASE_URL": url})
    assert not migrations.is_up_to_date(url)
    result = app.test_cli_runner().invoke(args=["db-upgrade"])
    assert result.exit_code == 0
    assert "Database is up to date." in result.output
    assert migrations.is_up_to_date(url)


def _sandbox_secrets(instance_path, start, results):
    start.wait()
    config = load_config(instance_path)
    results.append((config["SECRET_KEY"], config["TOKEN_ENCRYPTION_KEYS"]))


def test_processes_starting_together_in_a_new_instance_share_one_set_of_secrets(tmp_path):
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        results = manager.list()
        start = manager.Barrier(4)
        workers = [
            context.Process(target=_sandbox_secrets, args=(str(tmp_path), start, results))
            for _ in range(4)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
            assert worker.exitcode == 0
        seen = set(results)
    assert len(seen) == 1
    assert sorted(os.listdir(tmp_path)) == ["sandbox-secret-key", "sandbox-token-key"]
