import logging
import re
from datetime import UTC, datetime, timedelta

import pytest

from b24app.models import InstallState
from tests.conftest import frame_post, stored


def test_install_handshake_stores_the_portal_and_renders_the_install_page(live_server):
    sandbox = live_server.sandbox
    portal = sandbox.create_portal()
    launch = sandbox.frame_launch(portal.member_id)

    response = frame_post(launch)

    assert response.status_code == 200
    assert 'id="page-config"' in response.text
    assert '"mode": "install"' in response.text
    assert '"moduleId": "main"' in response.text
    assert launch.form["AUTH_ID"] not in response.text
    assert "X-Frame-Options" not in response.headers
    policy = response.headers["Content-Security-Policy"]
    assert f"frame-ancestors {live_server.sandbox_url}" in policy
    assert "script-src 'self'" in policy

    row = stored(live_server, portal.member_id)
    assert row.install_state == InstallState.PENDING
    assert row.domain == f"localhost:{live_server.port}"
    assert row.client_endpoint == live_server.sandbox_url + "/rest/"
    assert row.server_endpoint == live_server.sandbox_url + "/oauth-server/rest/"
    assert row.access_token == launch.form["AUTH_ID"]
    assert row.refresh_token == launch.form["REFRESH_ID"]
    assert row.user_id == 1
    expected_expiry = datetime.now(UTC) + timedelta(seconds=3600)
    assert abs((row.expires_at - expected_expiry).total_seconds()) < 10


def test_placement_handshake_after_install_finish_marks_the_portal_installed(live_server):
    sandbox = live_server.sandbox
    portal = sandbox.create_portal()
    assert frame_post(sandbox.frame_launch(portal.member_id)).status_code == 200
    sandbox.finish_install(portal.member_id)
    launch = sandbox.frame_launch(
        portal.member_id, placement="CRM_DEAL_DETAIL_TAB", placement_options={"ID": "8061"}
    )
    assert launch.install is False

    response = frame_post(launch)

    assert response.status_code == 200
    assert '"mode": "app"' in response.text
    assert '"placement": "CRM_DEAL_DETAIL_TAB"' in response.text
    row = stored(live_server, portal.member_id)
    assert row.install_state == InstallState.INSTALLED
    assert row.installed_at is not None
    assert row.access_token == launch.form["AUTH_ID"]


def test_a_non_admin_opening_the_app_keeps_the_administrators_tokens(live_server):
    sandbox = live_server.sandbox
    portal = sandbox.create_portal()
    admin_launch = sandbox.frame_launch(portal.member_id)
    frame_post(admin_launch)
    sandbox.finish_install(portal.member_id)
    user_launch = sandbox.frame_launch(portal.member_id, user_id=2)

    opened = frame_post(user_launch)
    poisoned = frame_post(
        sandbox.frame_launch(portal.member_id, user_id=2), {"REFRESH_ID": "poisoned"}
    )

    assert (opened.status_code, poisoned.status_code) == (200, 200)
    row = stored(live_server, portal.member_id)
    assert row.install_state == InstallState.INSTALLED
    assert (row.access_token, row.refresh_token, row.user_id) == (
        admin_launch.form["AUTH_ID"],
        admin_launch.form["REFRESH_ID"],
        1,
    )


@pytest.mark.parametrize("path", ["/app", "/install"])
def test_a_frame_page_opened_outside_a_portal_says_so(app, client, path):
    response = client.get(path, base_url=app.config["PUBLIC_URL"])
    assert response.status_code == 200
    assert b"open it from the portal" in response.data


@pytest.mark.parametrize(
    ("form_changes", "query_changes", "message"),
    [
        ({"AUTH_ID": None}, None, "The frame request lacks AUTH_ID."),
        ({"REFRESH_ID": None}, None, "The frame request lacks REFRESH_ID."),
        (None, {"DOMAIN": None}, "The frame request lacks DOMAIN."),
        ({"AUTH_EXPIRES": "an hour"}, None, "AUTH_EXPIRES must be a number of seconds."),
    ],
)
def test_malformed_handshakes_are_refused_with_400_and_store_nothing(
    live_server, form_changes, query_changes, message
):
    sandbox = live_server.sandbox
    portal = sandbox.create_portal()

    response = frame_post(sandbox.frame_launch(portal.member_id), form_changes, query_changes)

    assert response.status_code == 400
    assert message in response.text
    assert "Traceback" not in response.text
    assert stored(live_server, portal.member_id) is None


def test_a_token_the_oauth_server_rejects_is_refused(live_server):
    portal = live_server.sandbox.create_portal()
    launch = live_server.sandbox.frame_launch(portal.member_id)

    response = frame_post(launch, {"AUTH_ID": "0123456789abcdef"})

    assert response.status_code == 403
    assert "The OAuth server rejected the portal&#39;s token (invalid_token)." in response.text
    assert stored(live_server, portal.member_id) is None


def test_an_expired_token_is_refused(live_server):
    portal = live_server.sandbox.create_portal()
    launch = live_server.sandbox.frame_launch(portal.member_id)
    live_server.sandbox.expire_access_tokens(portal.member_id)

    response = frame_post(launch)

    assert response.status_code == 403
    assert "(expired_token)" in response.text
    assert stored(live_server, portal.member_id) is None


def test_a_token_of_another_app_is_refused(live_server):
    portal = live_server.sandbox.create_portal()
    launch = live_server.sandbox.frame_launch(portal.member_id)
    # This backend now belongs to another app than the one the sandbox issued the token to.
    live_server.app.extensions["b24app.oauth"].client_id = "local.another.app"

    response = frame_post(launch)

    assert response.status_code == 403
    assert "issued to another application" in response.text
    assert stored(live_server, portal.member_id) is None


def test_a_member_id_that_does_not_match_the_token_is_refused(live_server):
    sandbox = live_server.sandbox
    genuine = sandbox.create_portal()
    victim = sandbox.create_portal()
    launch = sandbox.frame_launch(genuine.member_id)

    response = frame_post(launch, {"member_id": victim.member_id})

    assert response.status_code == 403
    assert "belongs to another portal (member_id)" in response.text
    assert stored(live_server, victim.member_id) is None
    assert stored(live_server, genuine.member_id) is None


def test_a_domain_that_does_not_match_the_token_is_refused(live_server):
    portal = live_server.sandbox.create_portal()
    launch = live_server.sandbox.frame_launch(portal.member_id)

    response = frame_post(launch, query_changes={"DOMAIN": "victim.bitrix24.com"})

    assert response.status_code == 403
    assert "DOMAIN is not the portal that the token belongs to." in response.text
    assert stored(live_server, portal.member_id) is None


def test_a_rejected_handshake_leaves_an_installed_portal_as_it_was(live_server):
    sandbox = live_server.sandbox
    genuine = sandbox.create_portal()
    launch = sandbox.frame_launch(genuine.member_id)
    frame_post(launch)
    before = stored(live_server, genuine.member_id)

    response = frame_post(sandbox.frame_launch(genuine.member_id), {"AUTH_ID": "forged0000"})

    assert response.status_code == 403
    after = stored(live_server, genuine.member_id)
    assert (after.access_token, after.refresh_token) == (before.access_token, before.refresh_token)


def test_handshakes_never_log_tokens(live_server, caplog):
    caplog.set_level(logging.DEBUG)
    sandbox = live_server.sandbox
    portal = sandbox.create_portal()
    launch = sandbox.frame_launch(portal.member_id)

    frame_post(launch)
    frame_post(sandbox.frame_launch(portal.member_id), {"member_id": "f" * 32})

    text = "\n".join(record.getMessage() for record in caplog.records)
    assert re.search(r"Verified install handshake for portal " + portal.member_id, text)
    for secret in (launch.form["AUTH_ID"], launch.form["REFRESH_ID"], "sandbox-client-secret"):
        assert secret not in text


@pytest.mark.parametrize("path", ["/app", "/install"])
def test_a_post_that_is_no_frame_request_is_refused(app, client, path):
    response = client.post(path, json={"hello": "world"}, base_url=app.config["PUBLIC_URL"])
    assert response.status_code == 400
    assert b"The frame request lacks DOMAIN." in response.data
