"""Tokens encrypted at rest: the raw table, key rotation, legacy rows, dropped keys, key files."""

import os
import re
import subprocess
import sys

import pytest
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import create_engine, text

from b24app import TokenKeyError, create_app, migrations, store
from b24app.api import issue_page_token
from b24app.config import ConfigError
from b24app.encryption import encrypt_stored_tokens
from b24app.scheduler import PingScheduler
from tests.test_store import make_frame, record_install, save

KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()
RECIPE = (
    'python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
)
UNDECRYPTABLE = (
    "a stored token (portal {member_id}) cannot be decrypted with TOKEN_ENCRYPTION_KEYS; put "
    "back the key it was encrypted with, after the current one, and run "
    "`flask --app wsgi rotate-token-keys` before dropping that key again."
)


def app_with_keys(monkeypatch, database_url, keys):
    """Create an app on ``database_url`` whose TOKEN_ENCRYPTION_KEYS is ``keys``."""
    monkeypatch.setenv("TOKEN_ENCRYPTION_KEYS", keys)
    return create_app({"DATABASE_URL": database_url, "TESTING": True})


def member(number):
    return f"{number:032d}"


def store_portals(app, count):
    """Store ``count`` installed portals with tokens; return {member_id: their three tokens}."""
    tokens = {}
    with app.app_context():
        for number in range(count):
            member_id = member(number)
            values = (f"access-{number}-x", f"refresh-{number}-x", f"application-{number}-x")
            save(make_frame(member_id=member_id, auth_id=values[0], refresh_id=values[1]))
            assert record_install(
                values[2], member_id, access_token=values[0], refresh_token=values[1]
            )
            tokens[member_id] = values
    return tokens


def raw_tokens(database_url):
    """Return {member_id: (access_token, refresh_token, application_token)} as stored."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT member_id, access_token, refresh_token, application_token "
                    "FROM portals ORDER BY id"
                )
            ).all()
    finally:
        engine.dispose()
    return {row[0]: tuple(row[1:]) for row in rows}


def set_raw_tokens(database_url, member_id, values):
    """Overwrite a portal's stored token columns, as an earlier version wrote them."""
    engine = create_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "UPDATE portals SET access_token = :a, refresh_token = :r, "
                    "application_token = :t WHERE member_id = :m"
                ),
                {"a": values[0], "r": values[1], "t": values[2], "m": member_id},
            )
    finally:
        engine.dispose()


def read_tokens(app, member_id):
    with app.app_context():
        portal = store.get_portal(member_id)
    return portal.access_token, portal.refresh_token, portal.application_token


def decrypt_all(key, values):
    return tuple(Fernet(key).decrypt(value.encode()).decode() for value in values)


def test_tokens_are_ciphertext_in_the_table_and_plaintext_through_the_store(
    monkeypatch, database_url
):
    app = app_with_keys(monkeypatch, database_url, KEY_A)
    tokens = store_portals(app, 2)

    stored = raw_tokens(database_url)

    assert stored.keys() == tokens.keys()
    for member_id, plaintext in tokens.items():
        for value, secret in zip(stored[member_id], plaintext, strict=True):
            assert value.startswith("gAAAAA")
            assert secret not in value
        assert decrypt_all(KEY_A, stored[member_id]) == plaintext
        assert read_tokens(app, member_id) == plaintext
    with app.app_context():
        portal = store.get_portal(member(0))
        assert store.application_token_matches(portal, "application-0-x")
        assert not store.application_token_matches(portal, stored[member(0)][2])
        assert not store.application_token_matches(portal, "application-1-x")


def test_rotation_encrypts_every_row_with_the_new_key(monkeypatch, database_url):
    tokens = store_portals(app_with_keys(monkeypatch, database_url, KEY_A), 3)
    under_a = raw_tokens(database_url)

    rotating = app_with_keys(monkeypatch, database_url, f"{KEY_B},{KEY_A}")
    assert read_tokens(rotating, member(1)) == tokens[member(1)]
    result = rotating.test_cli_runner().invoke(args=["rotate-token-keys"])

    assert result.exit_code == 0, result.output
    assert result.output == "Encrypted the tokens of 3 portal(s) with the first key.\n"
    under_b = raw_tokens(database_url)
    for member_id, plaintext in tokens.items():
        assert set(under_b[member_id]).isdisjoint(under_a[member_id])
        assert decrypt_all(KEY_B, under_b[member_id]) == plaintext
        with pytest.raises(InvalidToken):
            decrypt_all(KEY_A, under_b[member_id])

    again = rotating.test_cli_runner().invoke(args=["rotate-token-keys"])
    assert again.output == "Encrypted the tokens of 0 portal(s) with the first key.\n"
    assert raw_tokens(database_url) == under_b

    only_b = app_with_keys(monkeypatch, database_url, KEY_B)
    assert {member_id: read_tokens(only_b, member_id) for member_id in tokens} == tokens


def test_rotation_works_in_batches_and_rotates_only_old_rows(monkeypatch, database_url):
    tokens = store_portals(app_with_keys(monkeypatch, database_url, KEY_A), 5)
    rotating = app_with_keys(monkeypatch, database_url, f"{KEY_B},{KEY_A}")
    with rotating.app_context():
        # A portal written under the new key already needs no change.
        save(make_frame(member_id=member(4), auth_id="access-new", refresh_id="refresh-new"))
        store.mark_uninstalled(member(3))
        changed = encrypt_stored_tokens(rotate=True, batch_size=2)

    # Portal 4 still has its application_token under the old key; portal 3 has no tokens.
    assert changed == 4
    stored = raw_tokens(database_url)
    assert stored[member(3)] == (None, None, None)
    for number in (0, 1, 2):
        assert decrypt_all(KEY_B, stored[member(number)]) == tokens[member(number)]
    assert decrypt_all(KEY_B, stored[member(4)]) == (
        "access-new",
        "refresh-new",
        "application-4-x",
    )


def test_db_upgrade_encrypts_tokens_stored_unencrypted_once(monkeypatch, database_url):
    app = app_with_keys(monkeypatch, database_url, KEY_A)
    tokens = store_portals(app, 3)
    # Portals 0 and 1 were written by a version that kept tokens in plaintext.
    for number in (0, 1):
        set_raw_tokens(database_url, member(number), tokens[member(number)])
    encrypted_before = raw_tokens(database_url)[member(2)]
    with app.app_context(), pytest.raises(TokenKeyError, match="is not encrypted yet"):
        store.get_portal(member(0))

    first = app.test_cli_runner().invoke(args=["db-upgrade"])

    assert first.exit_code == 0, first.output
    assert first.output == (
        "Encrypted the tokens of 2 portal(s) stored unencrypted.\nDatabase is up to date.\n"
    )
    after_first = raw_tokens(database_url)
    assert after_first[member(2)] == encrypted_before
    for member_id, plaintext in tokens.items():
        assert decrypt_all(KEY_A, after_first[member_id]) == plaintext
        assert read_tokens(app, member_id) == plaintext

    second = app.test_cli_runner().invoke(args=["db-upgrade"])

    assert second.output == "Database is up to date.\n"
    assert raw_tokens(database_url) == after_first


@pytest.mark.parametrize("command", ["serve", "scheduler"])
def test_commands_refuse_to_start_on_unencrypted_tokens(monkeypatch, tmp_path, command):
    url = "sqlite:///" + str(tmp_path / "legacy.sqlite3")
    migrations.upgrade(url)
    app = app_with_keys(monkeypatch, url, KEY_A)
    tokens = store_portals(app, 1)
    set_raw_tokens(url, member(0), tokens[member(0)])
    refuse_to_run(monkeypatch)

    result = app.test_cli_runner().invoke(args=[command])

    assert result.exit_code == 1
    assert result.output == (
        f"Error: Cannot start: a stored token (portal {member(0)}) is not encrypted yet; "
        "run `flask --app wsgi db-upgrade` to encrypt it.\n"
    )


def refuse_to_run(monkeypatch):
    """Make the server and the scheduler fail loudly instead of running forever."""

    def started(*args, **kwargs):
        raise AssertionError("the command started although the tokens are unreadable")

    monkeypatch.setattr("werkzeug.serving.run_simple", started)
    monkeypatch.setattr("b24app.scheduler.start_scheduler", started)


@pytest.fixture
def dropped_key_app(monkeypatch, database_url):
    """Return an app configured with key B alone over portals stored under key A."""
    store_portals(app_with_keys(monkeypatch, database_url, KEY_A), 2)
    return app_with_keys(monkeypatch, database_url, KEY_B)


def test_a_dropped_key_gives_a_clear_error(dropped_key_app):
    with dropped_key_app.app_context(), pytest.raises(TokenKeyError) as error:
        store.get_portal(member(0))

    assert str(error.value).startswith(
        "a stored token cannot be decrypted with TOKEN_ENCRYPTION_KEYS; put back the key"
    )


@pytest.mark.parametrize("command", ["serve", "scheduler", "rotate-token-keys"])
def test_commands_refuse_to_run_with_a_dropped_key(dropped_key_app, monkeypatch, command):
    refuse_to_run(monkeypatch)
    before = raw_tokens(dropped_key_app.config["DATABASE_URL"])

    result = dropped_key_app.test_cli_runner().invoke(args=[command])

    assert result.exit_code == 1
    prefix = "Error: " if command == "rotate-token-keys" else "Error: Cannot start: "
    assert result.output == prefix + UNDECRYPTABLE.format(member_id=member(0)) + "\n"
    assert raw_tokens(dropped_key_app.config["DATABASE_URL"]) == before


def test_a_request_meeting_a_dropped_key_gets_no_stack_trace(dropped_key_app, caplog):
    with dropped_key_app.app_context():
        page_token = issue_page_token(member(0), 1)

    response = dropped_key_app.test_client().get(
        "/api/status",
        headers={"Authorization": f"Bearer {page_token}"},
        base_url=dropped_key_app.config["PUBLIC_URL"],
    )

    assert response.status_code == 500
    assert response.json == {
        "error": "The app cannot read the tokens it stored; its administrator must check "
        "TOKEN_ENCRYPTION_KEYS."
    }
    errors = [record for record in caplog.records if record.name == "b24app.encryption"]
    assert [record.exc_info for record in errors] == [None]
    assert "cannot be decrypted with TOKEN_ENCRYPTION_KEYS" in errors[0].getMessage()


def production(monkeypatch, keys=None):
    monkeypatch.setenv("B24_CLIENT_ID", "local.123.456")
    monkeypatch.setenv("B24_CLIENT_SECRET", "secret")
    monkeypatch.setenv("SECRET_KEY", "k" * 32)
    monkeypatch.setenv("B24_PUBLIC_URL", "https://app.example.com")
    if keys is not None:
        monkeypatch.setenv("TOKEN_ENCRYPTION_KEYS", keys)
    return create_app()


@pytest.mark.parametrize("keys", [None, "", " , "])
def test_production_needs_token_encryption_keys(monkeypatch, keys):
    with pytest.raises(ConfigError) as error:
        production(monkeypatch, keys)

    assert str(error.value) == (
        "B24_CLIENT_ID is set, so the app runs against a real portal and needs "
        "TOKEN_ENCRYPTION_KEYS as well (see .env.example). Make a key for "
        f"TOKEN_ENCRYPTION_KEYS with: {RECIPE}"
    )


@pytest.mark.parametrize(
    ("keys", "position"),
    [
        ("not-a-fernet-key", "key 1 of 1"),
        (KEY_A[:-2], "key 1 of 1"),
        (f"{KEY_A},{KEY_B[:20]}", "key 2 of 2"),
        (f"{KEY_A}, {KEY_B}, short", "key 3 of 3"),
    ],
)
def test_production_refuses_a_malformed_key_without_repeating_it(monkeypatch, keys, position):
    with pytest.raises(ConfigError) as error:
        production(monkeypatch, keys)

    assert str(error.value) == (
        f"TOKEN_ENCRYPTION_KEYS holds a malformed key ({position}): each must be a Fernet key, "
        f"made with: {RECIPE}"
    )
    for key in keys.split(","):
        assert key.strip() not in str(error.value)


def test_production_takes_every_listed_key(monkeypatch):
    app = production(monkeypatch, f" {KEY_B} ,{KEY_A},")
    assert app.config["TOKEN_ENCRYPTION_KEYS"] == (KEY_B, KEY_A)


def test_the_sandbox_makes_a_private_key_file_and_keeps_using_it(tmp_path):
    key_file = tmp_path / "instance" / "sandbox-token-key"
    url = "sqlite:///" + str(tmp_path / "sandbox.sqlite3")
    migrations.upgrade(url)
    first = create_app({"DATABASE_URL": url})
    with first.app_context():
        save()

    second = create_app({"DATABASE_URL": url})

    assert key_file.stat().st_mode & 0o777 == 0o600
    assert first.config["TOKEN_ENCRYPTION_KEYS"] == (key_file.read_text(),)
    assert second.config["TOKEN_ENCRYPTION_KEYS"] == first.config["TOKEN_ENCRYPTION_KEYS"]
    Fernet(key_file.read_text())
    assert read_tokens(second, "m" * 32)[:2] == ("access1", "refresh1")


def test_a_configured_key_wins_over_the_sandbox_key_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TOKEN_ENCRYPTION_KEYS", KEY_A)
    app = create_app()
    assert app.config["TOKEN_ENCRYPTION_KEYS"] == (KEY_A,)
    assert not (tmp_path / "instance" / "sandbox-token-key").exists()


def test_the_database_file_the_app_creates_is_private(tmp_path):
    by_app = tmp_path / "by-app.sqlite3"
    by_migrations = tmp_path / "by-migrations.sqlite3"

    app = create_app({"DATABASE_URL": f"sqlite:///{by_app}"})
    migrations.upgrade(f"sqlite:///{by_migrations}")
    app.test_cli_runner().invoke(args=["db-upgrade"])
    with app.app_context():
        save()

    for path in (by_app, by_migrations, tmp_path / "by-app.sqlite3-wal"):
        assert os.stat(path).st_mode & 0o777 == 0o600, path


def test_an_existing_database_file_keeps_its_permissions(tmp_path):
    path = tmp_path / "shared.sqlite3"
    path.touch(mode=0o640)
    os.chmod(path, 0o640)

    create_app({"DATABASE_URL": f"sqlite:///{path}"})

    assert os.stat(path).st_mode & 0o777 == 0o640


def test_the_key_recipe_in_the_messages_makes_a_usable_key():
    command = re.fullmatch(r'python -c "(.*)"', RECIPE).group(1)
    made = subprocess.run(
        [sys.executable, "-c", command], capture_output=True, text=True, check=True, timeout=60
    )
    assert Fernet(made.stdout.strip())


def test_a_test_config_may_give_the_keys_in_the_environment_form(monkeypatch, database_url):
    tokens = store_portals(app_with_keys(monkeypatch, database_url, KEY_A), 1)
    app = create_app({"DATABASE_URL": database_url, "TOKEN_ENCRYPTION_KEYS": f"{KEY_B}, {KEY_A}"})
    assert read_tokens(app, member(0)) == tokens[member(0)]


def test_a_ping_meeting_a_dropped_key_is_one_log_line(dropped_key_app, caplog):
    scheduler = PingScheduler(dropped_key_app)

    scheduler._ping(member(0))

    errors = [record for record in caplog.records if record.levelname == "ERROR"]
    assert [record.getMessage() for record in errors] == [
        f"Ping to portal {member(0)} not sent: a stored token cannot be decrypted with "
        "TOKEN_ENCRYPTION_KEYS; put back the key it was encrypted with, after the current one, "
        "and run `flask --app wsgi rotate-token-keys` before dropping that key again."
    ]
    assert errors[0].exc_info is None
