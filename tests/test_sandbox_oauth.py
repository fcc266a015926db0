"""The sandbox's OAuth server: refresh rotation and app.info by token."""

import pytest
import requests

from tests.conftest import TIME_KEYS


@pytest.fixture
def portal(sandbox):
    return sandbox.create_portal()


def refresh(client, app, token, **overrides):
    query = {
        "grant_type": "refresh_token",
        "client_id": app.config["B24_CLIENT_ID"],
        "client_secret": app.config["B24_CLIENT_SECRET"],
        "refresh_token": token,
    }
    query.update(overrides)
    query = {key: value for key, value in query.items() if value is not None}
    return client.get(
        "/oauth-server/oauth/token/", query_string=query, base_url=app.config["SANDBOX_URL"]
    )


def rest(client, app, method, auth):
    return client.post(f"/rest/{method}", json={"auth": auth}, base_url=app.config["SANDBOX_URL"])


def test_refresh_returns_new_pair_in_protocol_shape(client, app, sandbox, portal):
    sandbox.finish_install(portal.member_id)
    launch = sandbox.frame_launch(portal.member_id, user_id=2, install=False)

    response = refresh(client, app, launch.form["REFRESH_ID"])

    assert response.status_code == 200
    body = response.json
    assert set(body) == {
        "access_token",
        "client_endpoint",
        "domain",
        "expires",
        "expires_in",
        "member_id",
        "refresh_token",
        "scope",
        "server_endpoint",
        "status",
        "user_id",
    }
    assert body["client_endpoint"] == app.config["SANDBOX_URL"] + "/rest/"
    assert body["server_endpoint"] == app.config["SANDBOX_URL"] + "/oauth-server/rest/"
    assert body["domain"] == "localhost:5000"
    assert body["member_id"] == portal.member_id
    assert body["user_id"] == 2
    assert body["scope"] == "pull"
    assert body["status"] == "L"
    assert body["expires_in"] == 3600
    assert body["access_token"] != launch.form["AUTH_ID"]
    assert body["refresh_token"] != launch.form["REFRESH_ID"]
    assert sandbox.refresh_count == 1
    assert sandbox.refresh_counts == {portal.member_id: 1}


def test_refresh_rotates_and_kills_old_tokens_but_not_other_chains(client, app, sandbox, portal):
    first = sandbox.frame_launch(portal.member_id)
    second = sandbox.frame_launch(portal.member_id)

    new = refresh(client, app, first.form["REFRESH_ID"]).json

    again = refresh(client, app, first.form["REFRESH_ID"])
    assert again.status_code == 400
    assert again.json["error"] == "invalid_grant"
    old_access = rest(client, app, "server.time", first.form["AUTH_ID"])
    assert old_access.status_code == 401
    assert old_access.json["error"] == "NO_AUTH_FOUND"
    assert rest(client, app, "server.time", new["access_token"]).status_code == 200
    assert rest(client, app, "server.time", second.form["AUTH_ID"]).status_code == 200
    assert refresh(client, app, second.form["REFRESH_ID"]).status_code == 200
    assert refresh(client, app, new["refresh_token"]).status_code == 200
    assert sandbox.refresh_count == 3


@pytest.mark.parametrize("missing", ["grant_type", "client_id", "client_secret", "refresh_token"])
def test_refresh_without_a_parameter_is_invalid_request(client, app, sandbox, portal, missing):
    launch = sandbox.frame_launch(portal.member_id)

    response = refresh(client, app, launch.form["REFRESH_ID"], **{missing: None})

    assert response.status_code == 400
    assert response.json == {
        "error": "invalid_request",
        "error_description": f'No "{missing}" parameter found',
    }
    assert sandbox.refresh_count == 0


@pytest.mark.parametrize(
    "field, value", [("client_id", "local.other.app"), ("client_secret", "wrong")]
)
def test_refresh_with_bad_client_is_invalid_client(client, app, sandbox, portal, field, value):
    launch = sandbox.frame_launch(portal.member_id)

    response = refresh(client, app, launch.form["REFRESH_ID"], **{field: value})

    assert response.status_code == 401
    assert response.json["error"] == "invalid_client"
    assert refresh(client, app, launch.form["REFRESH_ID"]).status_code == 200


def test_refresh_with_unknown_token_is_invalid_grant(client, app):
    response = refresh(client, app, "not-a-token")

    assert response.status_code == 400
    assert response.json["error"] == "invalid_grant"


def test_refresh_with_other_grant_type_is_invalid_request(client, app, sandbox, portal):
    launch = sandbox.frame_launch(portal.member_id)

    response = refresh(client, app, launch.form["REFRESH_ID"], grant_type="authorization_code")

    assert response.status_code == 400
    assert response.json["error"] == "invalid_request"


def test_refresh_with_expired_refresh_token_is_invalid_grant(live_server_factory):
    server = live_server_factory(env={"SANDBOX_REFRESH_TOKEN_LIFETIME": "-1"})
    sandbox = server.sandbox
    portal = sandbox.create_portal()
    launch = sandbox.frame_launch(portal.member_id)
    client = server.app.test_client()

    response = refresh(client, server.app, launch.form["REFRESH_ID"])

    assert response.status_code == 400
    assert response.json["error"] == "invalid_grant"


def test_refresh_after_uninstall_is_not_installed(client, app, sandbox, portal):
    launch = sandbox.frame_launch(portal.member_id)
    sandbox.finish_install(portal.member_id)
    sandbox.uninstall(portal.member_id)

    response = refresh(client, app, launch.form["REFRESH_ID"])

    assert response.status_code == 401
    assert response.json["error"] == "NOT_INSTALLED"
    assert rest(client, app, "server.time", launch.form["AUTH_ID"]).status_code == 401


def test_app_info_describes_token(client, app, sandbox, portal):
    launch = sandbox.frame_launch(portal.member_id, user_id=1)
    sandbox.finish_install(portal.member_id)

    response = client.get(
        "/oauth-server/rest/app.info",
        query_string={"auth": launch.form["AUTH_ID"]},
        base_url=app.config["SANDBOX_URL"],
    )

    assert response.status_code == 200
    result = response.json["result"]
    assert set(response.json["time"]) == TIME_KEYS
    assert result["client_id"] == app.config["B24_CLIENT_ID"]
    assert result["scope"] == "pull"
    assert result["user_id"] == 1
    assert isinstance(result["expires"], int)
    assert result["install"] == {
        "installed": True,
        "version": 1,
        "status": "L",
        "scope": "pull",
        "domain": "localhost:5000",
        "uri": "http://localhost:5000",
        "client_endpoint": "http://localhost:5000/rest/",
        "member_id": portal.member_id,
        "member_type": "PORTAL",
    }


def test_app_info_by_post_reports_not_installed(client, app, sandbox, portal):
    launch = sandbox.frame_launch(portal.member_id)

    response = client.post(
        "/oauth-server/rest/app.info",
        data={"auth": launch.form["AUTH_ID"]},
        base_url=app.config["SANDBOX_URL"],
    )

    assert response.status_code == 200
    assert response.json["result"]["install"]["installed"] is False


def test_app_info_with_expired_token(client, app, sandbox, portal):
    launch = sandbox.frame_launch(portal.member_id)
    sandbox.expire_access_tokens(portal.member_id)

    response = client.get(
        "/oauth-server/rest/app.info",
        query_string={"auth": launch.form["AUTH_ID"]},
        base_url=app.config["SANDBOX_URL"],
    )

    assert response.status_code == 401
    assert response.json == {
        "error": "expired_token",
        "error_description": "The access token provided has expired.",
    }


@pytest.mark.parametrize("query", [{"auth": "unknown"}, {}])
def test_app_info_with_unknown_token(client, app, query):
    response = client.get(
        "/oauth-server/rest/app.info", query_string=query, base_url=app.config["SANDBOX_URL"]
    )

    assert response.status_code == 401
    assert response.json == {
        "error": "invalid_token",
        "error_description": "Unable to get application by token",
    }


def test_oauth_server_has_no_other_methods(client, app, sandbox, portal):
    launch = sandbox.frame_launch(portal.member_id)

    response = client.get(
        "/oauth-server/rest/profile",
        query_string={"auth": launch.form["AUTH_ID"]},
        base_url=app.config["SANDBOX_URL"],
    )

    assert response.status_code == 404
    assert response.json["error"] == "ERROR_METHOD_NOT_FOUND"


def test_app_requests_do_not_reach_the_sandbox(client, app):
    response = client.get("/oauth-server/oauth/token/", base_url=app.config["PUBLIC_URL"])

    assert response.status_code == 404


def test_request_log_hides_secrets(live_server, caplog):
    sandbox = live_server.sandbox
    portal = sandbox.create_portal()
    launch = sandbox.frame_launch(portal.member_id)
    caplog.set_level("INFO", logger="werkzeug")

    response = requests.get(
        f"{live_server.sandbox_url}/oauth-server/oauth/token/",
        params={
            "grant_type": "refresh_token",
            "client_id": live_server.app.config["B24_CLIENT_ID"],
            "client_secret": live_server.app.config["B24_CLIENT_SECRET"],
            "refresh_token": launch.form["REFRESH_ID"],
        },
        timeout=10,
    )
    requests.get(
        f"{live_server.sandbox_url}/oauth-server/rest/app.info",
        params={"auth": response.json()["access_token"]},
        timeout=10,
    )

    assert response.status_code == 200
    assert "/oauth-server/oauth/token/" in caplog.text
    assert "client_secret=[hidden]" in caplog.text
    assert live_server.app.config["B24_CLIENT_SECRET"] not in caplog.text
    assert launch.form["REFRESH_ID"] not in caplog.text
    assert response.json()["access_token"] not in caplog.text
