"""The app in production mode, against a portal it does not host: a separate sandbox server."""

from cryptography.fernet import Fernet

from b24app import store
from b24app.config import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET
from b24app.models import InstallState
from b24app.scheduler import send_ping
from tests.conftest import frame_post


def test_production_mode_verifies_stores_and_pings_through_a_real_oauth_server(
    live_server_factory, tmp_path
):
    # One server plays Bitrix24 (portal, OAuth server, push server) ...
    bitrix = live_server_factory()
    # ... and another runs the app with real credentials for it, so no sandbox of its own.
    app_server = live_server_factory(
        env={
            "B24_CLIENT_ID": SANDBOX_CLIENT_ID,
            "B24_CLIENT_SECRET": SANDBOX_CLIENT_SECRET,
            "SECRET_KEY": "production-test-key-" + "x" * 16,
            "TOKEN_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
            "B24_OAUTH_SERVER": bitrix.sandbox_url + "/oauth-server",
        },
        test_config={"DATABASE_URL": "sqlite:///" + str(tmp_path / "production.sqlite3")},
    )
    assert app_server.app.config["SANDBOX"] is False
    assert "sandbox" not in app_server.app.extensions
    sandbox = bitrix.sandbox
    portal = sandbox.create_portal()

    install = frame_post(sandbox.frame_launch(portal.member_id), app_url=app_server.public_url)
    sandbox.finish_install(portal.member_id)
    opened = frame_post(sandbox.frame_launch(portal.member_id), app_url=app_server.public_url)

    assert (install.status_code, opened.status_code) == (200, 200)
    with app_server.app.app_context():
        row = store.get_portal(portal.member_id)
        assert row.install_state == InstallState.INSTALLED
        assert row.server_endpoint == bitrix.sandbox_url + "/oauth-server/rest/"
        assert send_ping(portal.member_id, "main") == 1
    (ping,) = [m for m in sandbox.pushed_messages if m.member_id == portal.member_id]
    assert (ping.command, ping.module_id, ping.params["sequence"]) == ("ping", "main", 1)
    with bitrix.app.app_context():
        assert store.get_portal(portal.member_id) is None
