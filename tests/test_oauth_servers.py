"""Each portal's OAuth server, taken only from the allow-list: for proofs and for refreshes."""

import pytest
from sqlalchemy import update

from b24app import create_app
from b24app.bitrix import oauth_client, rest_client
from b24app.bitrix.errors import CallRejected
from b24app.config import ConfigError
from b24app.db import transaction
from b24app.models import Portal
from tests.conftest import frame_post, install_portal, stored
from tests.test_config import production


def set_portal(server, member_id, **values):
    with server.app.app_context(), transaction() as session:
        session.execute(update(Portal).where(Portal.member_id == member_id).values(**values))


def test_production_trusts_the_known_regions_and_its_default_server_first(monkeypatch):
    monkeypatch.setenv("B24_OAUTH_SERVER", "https://oauth.bitrix24.tech/")

    app = production(monkeypatch, "https://app.example.com")

    assert app.config["OAUTH_SERVERS"] == [
        "https://oauth.bitrix24.tech",
        "https://oauth.bitrix.info",
    ]
    with app.app_context():
        assert oauth_client().server_for("") == "https://oauth.bitrix24.tech"
        assert oauth_client().server_for("https://oauth.bitrix.info/rest/") == (
            "https://oauth.bitrix.info"
        )
        with pytest.raises(CallRejected) as error:
            oauth_client().server_for("https://oauth.bitrix.info.evil.example/rest/")
    assert error.value.code == "OAUTH_SERVER_NOT_ALLOWED"


def test_an_allow_list_entry_that_is_no_url_is_refused(monkeypatch):
    monkeypatch.setenv("B24_OAUTH_SERVERS", "https://oauth.bitrix.info,oauth.example")
    with pytest.raises(
        ConfigError, match="B24_OAUTH_SERVERS must list http\\(s\\) URLs, got 'oauth.example'."
    ):
        create_app()


def test_a_handshake_naming_an_oauth_server_outside_the_allow_list_is_refused(live_server):
    portal = live_server.sandbox.create_portal()
    launch = live_server.sandbox.frame_launch(portal.member_id)

    response = frame_post(launch, {"SERVER_ENDPOINT": "https://oauth.evil.example/rest/"})

    assert response.status_code == 400
    assert "SERVER_ENDPOINT is not one of the OAuth servers this app trusts." in response.text
    assert stored(live_server, portal.member_id) is None


def test_a_handshake_stores_the_oauth_server_the_portal_named(live_server):
    portal = install_portal(live_server)

    assert stored(live_server, portal.member_id).server_endpoint == (
        live_server.sandbox_url + "/oauth-server/rest/"
    )


def test_a_refresh_goes_to_the_oauth_server_of_the_portals_region(live_server_factory):
    # A second sandbox plays a portal of another region, with its own OAuth server.
    other_region = live_server_factory()
    other_oauth = other_region.sandbox_url + "/oauth-server"
    server = live_server_factory(env={"B24_OAUTH_SERVERS": other_oauth})
    local = install_portal(server)
    remote = other_region.sandbox.create_portal()
    tokens = other_region.sandbox.issue_tokens(remote.member_id, 1)
    # The app knows the remote portal as if its frame had opened there.
    set_portal(
        server,
        local.member_id,
        client_endpoint=other_region.sandbox_url + "/rest/",
        server_endpoint=other_oauth + "/rest/",
        access_token=tokens.access_token,
        refresh_token=tokens.refresh_token,
    )
    other_region.sandbox.expire_access_tokens(remote.member_id)

    with server.app.app_context():
        answer = rest_client().call(local.member_id, "profile")

    assert answer["result"]["ID"] == "1"
    assert other_region.sandbox.refresh_counts == {remote.member_id: 1}
    assert server.sandbox.refresh_counts == {}


def test_a_stored_oauth_server_no_longer_allowed_is_never_asked(live_server):
    portal = install_portal(live_server)
    set_portal(live_server, portal.member_id, server_endpoint="https://oauth.example/rest/")
    live_server.sandbox.expire_access_tokens(portal.member_id)
    before = stored(live_server, portal.member_id)

    with live_server.app.app_context(), pytest.raises(CallRejected) as error:
        rest_client().call(portal.member_id, "profile")

    assert error.value.code == "OAUTH_SERVER_NOT_ALLOWED"
    after = stored(live_server, portal.member_id)
    assert (after.access_token, after.refresh_token, after.access_problem) == (
        before.access_token,
        before.refresh_token,
        None,
    )
    assert live_server.sandbox.refresh_counts == {}
