"""Fixtures: an app on a fresh SQLite file, and a live threaded server for app and sandbox."""

import os
import secrets
import threading
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from werkzeug.serving import make_server

from b24app import create_app, migrations, store

# Settings a developer's shell or .env may hold; every test starts without them.
SETTINGS = (
    "B24_CLIENT_ID",
    "B24_CLIENT_SECRET",
    "SECRET_KEY",
    "TOKEN_ENCRYPTION_KEYS",
    "DATABASE_URL",
    "PING_INTERVAL",
    "PULL_MODULE_ID",
    "B24_OAUTH_SERVER",
    "B24_OAUTH_SERVERS",
    "B24_PUBLIC_URL",
    "B24_JSSDK_URL",
    "B24_SANDBOX_URL",
    "SCHEDULER_IN_SERVER",
    "SANDBOX_ACCESS_TOKEN_LIFETIME",
    "SANDBOX_REFRESH_TOKEN_LIFETIME",
    "SANDBOX_STATE_FILE",
    "SANDBOX_RATE_LIMIT",
    "SANDBOX_RATE_DRAIN",
    "REST_TIMEOUT",
    "OAUTH_TIMEOUT",
    "REST_ATTEMPTS",
    "BACKOFF_MAX",
    "PAGE_TOKEN_MAX_AGE",
    "ADMIN_TOKEN_MAX_AGE",
    "EVENT_LOG_RETENTION_DAYS",
)

# Every REST success carries a ``time`` block with these keys.
TIME_KEYS = {
    "start",
    "finish",
    "duration",
    "processing",
    "date_start",
    "date_finish",
    "operating_reset_at",
    "operating",
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    """Run every test without the developer's settings, with its own instance folder."""
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("b24app.load_dotenv", lambda *args, **kwargs: False)
    monkeypatch.setenv("B24_INSTANCE_PATH", str(tmp_path / "instance"))


def build_app(tmp_path, test_config=None):
    """Create an app on a migrated database (by default a SQLite file in ``tmp_path``)."""
    config = {"TESTING": True, "SCHEDULER_IN_SERVER": False}
    config.update(test_config or {})
    config.setdefault("DATABASE_URL", "sqlite:///" + os.path.join(tmp_path, "test.sqlite3"))
    migrations.upgrade(config["DATABASE_URL"])
    return create_app(config)


@pytest.fixture
def app(tmp_path):
    return build_app(tmp_path)


@pytest.fixture
def client(app):
    """Return a test client; pass ``base_url=PUBLIC_URL`` or ``SANDBOX_URL`` to pick a site."""
    return app.test_client()


@pytest.fixture
def sandbox(app):
    """Return the sandbox portal's state of the ``app`` fixture."""
    return app.extensions["sandbox"]


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


class LiveServer:
    """The app and the sandbox portal served over real HTTP on one free port.

    The app is at ``http://127.0.0.1:PORT`` and the portal at ``http://localhost:PORT``: two
    different sites, as a real portal and a real app are. ``port`` 0 picks a free port; a stopped
    server's port restarts the app at the addresses it had, as a developer's restart does.
    """

    def __init__(self, tmp_path, monkeypatch, env=None, test_config=None, port=0):
        self._app = None
        self.server = make_server("127.0.0.1", port, self._wsgi, threaded=True)
        self.port = self.server.server_port
        self.public_url = f"http://127.0.0.1:{self.port}"
        self.sandbox_url = f"http://localhost:{self.port}"
        monkeypatch.setenv("B24_PUBLIC_URL", self.public_url)
        monkeypatch.setenv("B24_SANDBOX_URL", self.sandbox_url)
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, str(value))
        self.app = build_app(tmp_path, test_config)
        self._app = self.app
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _wsgi(self, environ, start_response):
        return self._app(environ, start_response)

    @property
    def sandbox(self):
        """The sandbox portal's state, for arranging and inspecting a test."""
        return self.app.extensions["sandbox"]

    def stop(self):
        """Stop serving and free the port; stopping twice is harmless."""
        self.server.shutdown()
        self.thread.join(timeout=5)
        self.server.server_close()


@pytest.fixture
def live_server_factory(tmp_path, monkeypatch):
    """Return a function that starts a live server with extra environment settings."""
    servers = []

    def start(env=None, test_config=None, port=0):
        server = LiveServer(tmp_path, monkeypatch, env, test_config, port)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def live_server(live_server_factory):
    return live_server_factory()


def frame_post(launch, form_changes=None, query_changes=None, app_url=None):
    """Make a sandbox frame launch's POST with ``requests``, optionally altering its fields.

    :param app_url: post to this app instead of the one the sandbox registered (same path).
    """
    url, _, query = launch.url.partition("?")
    if app_url:
        url = app_url + urlsplit(url).path
    params = dict(parse_qsl(query))
    params.update(query_changes or {})
    form = {**launch.form, **(form_changes or {})}
    return requests.post(
        url,
        params={k: v for k, v in params.items() if v is not None},
        data={k: v for k, v in form.items() if v is not None},
        timeout=10,
    )


def stored(server, member_id):
    """Return what the app of ``server`` has stored for the portal ``member_id``, or None."""
    with server.app.app_context():
        return store.get_portal(member_id)


def install_portal(server):
    """Create a sandbox portal, run the install handshake and finish the install; return it."""
    portal = server.sandbox.create_portal()
    response = frame_post(server.sandbox.frame_launch(portal.member_id))
    assert response.status_code == 200, response.text
    server.sandbox.finish_install(portal.member_id)
    response = frame_post(server.sandbox.frame_launch(portal.member_id))
    assert response.status_code == 200, response.text
    return portal


POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """Yield the URL of a fresh, migrated database of each kind."""
    if request.param == "sqlite":
        url = "sqlite:///" + str(tmp_path / "store.sqlite3")
        migrations.upgrade(url)
        yield url
        return

    server = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with server.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        server.dispose()
        pytest.skip(f"No PostgreSQL at TEST_POSTGRES_URL ({type(exc).__name__})")
    name = "b24app_test_" + secrets.token_hex(4)
    with server.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    try:
        migrations.upgrade(url)
        yield url
    finally:
        with server.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        server.dispose()
