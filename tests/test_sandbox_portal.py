"""The sandbox portal's pages, frame launches, lifecycle and event delivery."""

import threading
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from b24app.bitrix import forms
from b24app.sandbox.state import SandboxError


@pytest.fixture
def portal(sandbox):
    return sandbox.create_portal()


@pytest.fixture
def sandbox_get(client, app):
    def get(path):
        return client.get(path, base_url=app.config["SANDBOX_URL"])

    return get


@pytest.fixture
def sandbox_post(client, app):
    def post(path, **kwargs):
        return client.post(path, base_url=app.config["SANDBOX_URL"], **kwargs)

    return post


class HandlerServer:
    """A tiny event handler on loopback that records what it receives."""

    def __init__(self, status=200):
        self.received = []
        self.status = status
        self.server = make_server("127.0.0.1", 0, self.wsgi, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}/events"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wsgi(self, environ, start_response):
        request = Request(environ)
        self.received.append((request.content_type, request.get_data(as_text=True)))
        return Response("ok", status=self.status)(environ, start_response)

    def stop(self):
        self.server.shutdown()
        self.thread.join(timeout=5)


@pytest.fixture
def handler_server():
    server = HandlerServer()
    yield server
    server.stop()


# Frame launches.


def test_first_launch_of_admin_is_the_install_path(sandbox, portal, app):
    launch = sandbox.frame_launch(portal.member_id)

    url, _, query = launch.url.partition("?")
    assert url == app.config["PUBLIC_URL"] + "/install"
    assert dict(parse_qsl(query)) == {
        "DOMAIN": "localhost:5000",
        "PROTOCOL": "0",
        "LANG": "en",
        "APP_SID": launch.app_sid,
    }
    assert launch.iframe_name == f"localhost:5000|0|{launch.app_sid}"
    assert set(launch.form) == {
        "AUTH_ID",
        "AUTH_EXPIRES",
        "REFRESH_ID",
        "SERVER_ENDPOINT",
        "APPLICATION_TOKEN",
        "APPLICATION_SCOPE",
        "member_id",
        "status",
        "PLACEMENT",
    }
    assert launch.form["AUTH_EXPIRES"] == "3600"
    assert launch.form["SERVER_ENDPOINT"] == "http://localhost:5000/oauth-server/rest/"
    assert launch.form["APPLICATION_TOKEN"] == portal.application_token
    assert launch.form["APPLICATION_SCOPE"] == "pull"
    assert launch.form["member_id"] == portal.member_id
    assert launch.form["status"] == "L"
    assert launch.form["PLACEMENT"] == "DEFAULT"
    assert launch.init_data["INSTALL"] is True
    assert launch.init_data["IS_ADMIN"] is True
    assert launch.init_data["PATH"] == "/install"
    assert launch.init_data["MEMBER_ID"] == portal.member_id
    assert launch.init_data["AUTH_ID"] == launch.form["AUTH_ID"]
    assert launch.init_data["PLACEMENT_OPTIONS"] == {}


def test_launch_after_install_is_the_handler_path_with_placement_options(sandbox, portal, app):
    sandbox.finish_install(portal.member_id)

    launch = sandbox.frame_launch(
        portal.member_id, user_id=2, placement="crm_deal_detail_tab", placement_options={"ID": "8"}
    )

    assert launch.url.startswith(app.config["PUBLIC_URL"] + "/app?")
    assert launch.form["PLACEMENT"] == "CRM_DEAL_DETAIL_TAB"
    assert launch.form["PLACEMENT_OPTIONS"] == '{"ID": "8"}'
    assert launch.init_data["PLACEMENT_OPTIONS"] == {"ID": "8"}
    assert launch.init_data["INSTALL"] is False
    assert launch.init_data["IS_ADMIN"] is False


def test_each_launch_issues_its_own_tokens(sandbox, portal):
    first = sandbox.frame_launch(portal.member_id)
    second = sandbox.frame_launch(portal.member_id)

    assert first.form["AUTH_ID"] != second.form["AUTH_ID"]
    assert first.app_sid != second.app_sid
    assert sandbox.find_token(first.form["AUTH_ID"]).user_id == 1


@pytest.mark.parametrize(
    "arguments",
    [
        {"user_id": 2},
        {"user_id": 3},
        {"placement_options": "[1]"},
        {"placement_options": "not json"},
    ],
)
def test_launch_refuses_what_a_portal_would_not_do(sandbox, portal, arguments):
    with pytest.raises(SandboxError):
        sandbox.frame_launch(portal.member_id, **arguments)


def test_launch_of_unknown_portal(sandbox):
    with pytest.raises(SandboxError):
        sandbox.frame_launch("0" * 32)


# Pages and their JSON endpoints.


def test_index_lists_portals_and_creates_one(sandbox, sandbox_get, sandbox_post):
    response = sandbox_post("/portals")

    [portal] = sandbox.portals
    assert response.status_code == 302
    assert response.headers["Location"] == f"/portal/{portal.member_id}/?user=1"
    assert portal.member_id in sandbox_get("/").get_data(as_text=True)


def test_portal_page_for_admin_before_install(portal, sandbox_get):
    response = sandbox_get(f"/portal/{portal.member_id}/?user=1")

    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert response.headers["Content-Security-Policy"] == "script-src 'self'"
    assert 'id="install-button"' in page
    assert 'id="open-button"' not in page
    assert 'id="app-state" data-state="not_installed">Not installed<' in page
    assert "/static/sandbox/portal.js" in page
    assert "<script>" not in page


def test_portal_page_for_user_before_install(portal, sandbox_get):
    page = sandbox_get(f"/portal/{portal.member_id}/?user=2").get_data(as_text=True)

    assert 'id="install-button"' not in page
    assert 'id="frame-notice"' in page


def test_portal_page_after_install(sandbox, portal, sandbox_get):
    sandbox.finish_install(portal.member_id)

    page = sandbox_get(f"/portal/{portal.member_id}/?user=1").get_data(as_text=True)

    assert 'id="open-button"' in page
    assert 'id="uninstall-button"' in page
    assert 'id="uninstall-clean"' in page
    assert 'data-app-state="installed"' in page


def test_portal_page_after_an_api_only_install_opens_no_frame(sandbox, portal, sandbox_get):
    sandbox.install_api_only(portal.member_id)

    page = sandbox_get(f"/portal/{portal.member_id}/?user=1").get_data(as_text=True)

    # The page script opens the app's frame only in state "installed".
    assert 'data-app-state="api_only"' in page
    assert 'data-state="api_only">Installed, API only<' in page
    assert 'id="api-only-notice"' in page
    assert 'id="open-button"' not in page
    assert 'id="uninstall-button"' in page

    sandbox.uninstall(portal.member_id)
    sandbox.finish_install(portal.member_id)
    page = sandbox_get(f"/portal/{portal.member_id}/?user=1").get_data(as_text=True)
    assert 'data-app-state="installed"' in page
    assert 'id="api-only-notice"' not in page


@pytest.mark.parametrize("path", ["/portal/nope/?user=1", "/portal/{member_id}/?user=7"])
def test_portal_page_not_found(portal, sandbox_get, path):
    assert sandbox_get(path.format(member_id=portal.member_id)).status_code == 404


def test_frame_endpoint_returns_a_launch(sandbox, portal, sandbox_post):
    response = sandbox_post(f"/portal/{portal.member_id}/frame", json={"user": 1, "install": None})

    launch = response.json
    assert response.status_code == 200
    assert launch["install"] is True
    assert sandbox.find_launch(launch["app_sid"]).form == launch["form"]
    assert launch["app_origin"] == "http://127.0.0.1:5000"


def test_frame_endpoint_refuses_non_admin_before_install(portal, sandbox_post):
    response = sandbox_post(f"/portal/{portal.member_id}/frame", json={"user": 2})

    assert response.status_code == 403
    assert response.json["error"] == "ACCESS_DENIED"


def test_install_finish_endpoint(sandbox, portal, sandbox_post):
    launch = sandbox.frame_launch(portal.member_id)

    wrong = sandbox_post(
        f"/portal/{portal.member_id}/install-finish", json={"user": 1, "app_sid": "x"}
    )
    right = sandbox_post(
        f"/portal/{portal.member_id}/install-finish",
        json={"user": 1, "app_sid": launch.app_sid},
    )

    assert wrong.status_code == 403
    assert right.status_code == 200
    assert sandbox.get_portal(portal.member_id).installed is True


def test_install_finish_endpoint_needs_an_install_frame(sandbox, portal, sandbox_post):
    launch = sandbox.frame_launch(portal.member_id, install=False)

    response = sandbox_post(
        f"/portal/{portal.member_id}/install-finish",
        json={"user": 1, "app_sid": launch.app_sid},
    )

    assert response.status_code == 403
    assert sandbox.get_portal(portal.member_id).installed is False


def test_refresh_auth_endpoint_issues_fresh_tokens(sandbox, portal, sandbox_post):
    launch = sandbox.frame_launch(portal.member_id)

    response = sandbox_post(
        f"/portal/{portal.member_id}/refresh-auth", json={"user": 1, "app_sid": launch.app_sid}
    )

    tokens = response.json
    assert set(tokens) == {"AUTH_ID", "REFRESH_ID", "AUTH_EXPIRES"}
    assert tokens["AUTH_ID"] != launch.form["AUTH_ID"]
    assert sandbox.find_token(tokens["AUTH_ID"]).user_id == 1


def test_uninstall_endpoint_needs_admin(sandbox, portal, sandbox_post):
    sandbox.finish_install(portal.member_id)

    refused = sandbox_post(f"/portal/{portal.member_id}/uninstall", data={"user": "2"})
    done = sandbox_post(f"/portal/{portal.member_id}/uninstall", data={"user": "1", "clean": "1"})

    assert refused.status_code == 403
    assert done.status_code == 302
    assert sandbox.get_portal(portal.member_id).app_state == "uninstalled"


# Lifecycle.


def test_uninstall_revokes_tokens_and_handlers_and_renews_application_token(sandbox, portal):
    sandbox.finish_install(portal.member_id)
    launch = sandbox.frame_launch(portal.member_id)
    sandbox.bind_event(portal.member_id, "ONAPPUNINSTALL", "http://127.0.0.1:9/e", 0, 1)
    old_application_token = portal.application_token

    sandbox.uninstall(portal.member_id, clean=True)

    assert sandbox.find_token(launch.form["AUTH_ID"]) is None
    assert sandbox.bound_events(portal.member_id) == []
    assert portal.installed is False
    assert portal.application_token != old_application_token
    reinstall = sandbox.frame_launch(portal.member_id)
    assert reinstall.install is True
    assert reinstall.form["APPLICATION_TOKEN"] == portal.application_token


def test_expire_access_tokens_touches_one_portal(sandbox, portal):
    other = sandbox.create_portal()
    mine = sandbox.frame_launch(portal.member_id).form["AUTH_ID"]
    theirs = sandbox.frame_launch(other.member_id).form["AUTH_ID"]

    sandbox.expire_access_tokens(portal.member_id)

    assert sandbox.find_token(mine).expires_in == 0
    assert sandbox.find_token(theirs).expires_in > 3500


# Event delivery.


def test_install_event_is_posted_form_encoded(sandbox, portal, handler_server, app):
    sandbox.frame_launch(portal.member_id)
    handler = sandbox.bind_event(portal.member_id, "ONAPPINSTALL", handler_server.url, 0, 1)

    sandbox.finish_install(portal.member_id)
    [delivery] = sandbox.wait_for_event_deliveries(1)

    assert delivery.status == 200
    assert delivery.error is None
    assert delivery.handler == handler_server.url
    assert delivery.event == "ONAPPINSTALL"
    [(content_type, body)] = handler_server.received
    assert content_type == "application/x-www-form-urlencoded"
    keys = [key for key, _ in parse_qsl(body)]
    assert keys == [
        "event",
        "event_handler_id",
        "data[VERSION]",
        "data[ACTIVE]",
        "data[INSTALLED]",
        "data[LANGUAGE_ID]",
        "ts",
        "auth[access_token]",
        "auth[expires]",
        "auth[expires_in]",
        "auth[scope]",
        "auth[domain]",
        "auth[server_endpoint]",
        "auth[status]",
        "auth[client_endpoint]",
        "auth[member_id]",
        "auth[user_id]",
        "auth[refresh_token]",
        "auth[application_token]",
    ]
    event = forms.parse_query(body)
    assert event["event_handler_id"] == str(handler.id)
    assert event["data"] == {"VERSION": "1", "ACTIVE": "Y", "INSTALLED": "Y", "LANGUAGE_ID": "en"}
    assert event["auth"]["member_id"] == portal.member_id
    assert event["auth"]["application_token"] == portal.application_token
    assert event["auth"]["client_endpoint"] == "http://localhost:5000/rest/"
    assert event["auth"]["user_id"] == "1"
    assert sandbox.find_token(event["auth"]["access_token"]).member_id == portal.member_id


def test_uninstall_event_has_no_tokens(sandbox, portal, handler_server):
    sandbox.finish_install(portal.member_id)
    sandbox.bind_event(portal.member_id, "ONAPPUNINSTALL", handler_server.url, 0, 1)
    application_token = portal.application_token

    sandbox.uninstall(portal.member_id, clean=True)
    [delivery] = sandbox.wait_for_event_deliveries(1)

    assert delivery.status == 200
    event = forms.parse_query(handler_server.received[0][1])
    assert event["event"] == "ONAPPUNINSTALL"
    assert event["data"] == {"LANGUAGE_ID": "en", "CLEAN": "1"}
    assert event["auth"] == {
        "domain": "localhost:5000",
        "server_endpoint": "http://localhost:5000/oauth-server/rest/",
        "client_endpoint": "http://localhost:5000/rest/",
        "member_id": portal.member_id,
        "application_token": application_token,
    }


def test_failed_delivery_is_recorded_and_not_retried(sandbox, portal):
    sandbox.bind_event(portal.member_id, "ONAPPINSTALL", "http://127.0.0.1:9/events", 0, 1)

    sandbox.finish_install(portal.member_id)
    deliveries = sandbox.wait_for_event_deliveries(1)

    assert len(deliveries) == 1
    assert deliveries[0].status is None
    assert "ConnectionError" in deliveries[0].error


def test_delivery_never_leaves_loopback(sandbox, portal):
    sandbox.bind_event(portal.member_id, "ONAPPINSTALL", "http://example.com/events", 0, 1)

    sandbox.finish_install(portal.member_id)
    [delivery] = sandbox.wait_for_event_deliveries(1)

    assert delivery.status is None
    assert "loopback" in delivery.error


def test_bound_handler_over_rest_gets_install_event(live_server, handler_server):
    sandbox = live_server.sandbox
    portal = sandbox.create_portal()
    launch = sandbox.frame_launch(portal.member_id)
    bound = requests.post(
        f"{live_server.sandbox_url}/rest/event.bind",
        json={
            "auth": launch.form["AUTH_ID"],
            "event": "ONAPPINSTALL",
            "handler": handler_server.url,
        },
        timeout=10,
    )
    finished = requests.post(
        f"{live_server.sandbox_url}/portal/{portal.member_id}/install-finish",
        json={"user": 1, "app_sid": launch.app_sid},
        timeout=10,
    )

    [delivery] = sandbox.wait_for_event_deliveries(1)
    assert bound.json()["result"] is True
    assert finished.status_code == 200
    assert delivery.status == 200
    assert urlsplit(delivery.handler).path == "/events"
