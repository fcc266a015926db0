import pytest

from b24app import create_app
from b24app.config import SANDBOX_CLIENT_ID, ConfigError


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


def test_production_mode_never_mounts_the_sandbox(monkeypatch):
    monkeypatch.setenv("B24_CLIENT_ID", "local.123.456")
    monkeypatch.setenv("B24_CLIENT_SECRET", "secret")
    monkeypatch.setenv("SECRET_KEY", "key")
    monkeypatch.setenv("B24_PUBLIC_URL", "https://app.example.com")
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
        ("PING_INTERVAL", "soon", "PING_INTERVAL must be a number"),
        ("PING_INTERVAL", "0", "PING_INTERVAL must be a positive number"),
        ("PULL_MODULE_ID", "Main", "PULL_MODULE_ID may hold only lower-case"),
        ("PULL_MODULE_ID", "my-app", "PULL_MODULE_ID may hold only lower-case"),
        ("SCHEDULER_IN_SERVER", "maybe", "SCHEDULER_IN_SERVER must be true or false"),
    ],
)
def test_invalid_settings_are_refused(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        create_app()
