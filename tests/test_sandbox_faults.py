"""Making the sandbox fail as a real portal and OAuth server fail, and its rate limit."""

import json
import logging
import time

import pytest
import requests

from b24app.sandbox.state import SandboxError
from tests.conftest import build_app


@pytest.fixture
def server(live_server_factory):
    return live_server_factory()


@pytest.fixture
def portal(server):
    portal = server.sandbox.create_portal()
    server.sandbox.finish_install(portal.member_id)
    return portal


def tokens(server, portal):
    """Return a fresh (access token, refresh token) pair of the portal's admin."""
    launch = server.sandbox.frame_launch(portal.member_id)
    return launch.form["AUTH_ID"], launch.form["REFRESH_ID"]


def refresh(server, refresh_token, timeout=10):
    return requests.get(
        f"{server.sandbox_url}/oauth-server/oauth/token/",
        params={
            "grant_type": "refresh_token",
            "client_id": server.app.config["B24_CLIENT_ID"],
            "client_secret": server.app.config["B24_CLIENT_SECRET"],
            "refresh_token": refresh_token,
        },
        timeout=timeout,
    )


def app_info(server, access_token):
    return requests.get(
        f"{server.sandbox_url}/oauth-server/rest/app.info",
        params={"auth": access_token},
        timeout=10,
    )


def rest(server, method, auth, timeout=10, **params):
    return requests.post(
        f"{server.sandbox_url}/rest/{method}",
        json={"auth": auth, **params},
        timeout=timeout,
        allow_redirects=False,
    )


def faults_url(server, portal):
    return f"{server.sandbox_url}/portal/{portal.member_id}/faults"


def add_fault(server, portal, **fault):
    response = requests.post(faults_url(server, portal), json=fault, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()


def listed_faults(server, portal):
    response = requests.get(faults_url(server, portal), timeout=10)
    assert response.status_code == 200
    return response.json()["faults"]


def set_condition(server, portal, condition):
    return requests.post(
        f"{server.sandbox_url}/portal/{portal.member_id}/condition",
        json={"condition": condition},
        timeout=10,
    )


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the sandbox never got there"
        time.sleep(0.02)


# The OAuth server's refusals.


@pytest.mark.parametrize(
    ("kind", "status", "description"),
    [
        ("invalid_grant", 400, "Invalid grant"),
        ("invalid_client", 401, "Invalid client credentials"),
        ("wrong_client", 200, "Wrong client"),
        ("PAYMENT_REQUIRED", 401, "Subscription has been ended"),
        ("NOT_INSTALLED", 401, "Application not installed"),
        ("NO_AUTH_FOUND", 401, "Wrong authorization data"),
        ("PORTAL_DELETED", 404, "Portal was deleted"),
    ],
)
def test_an_oauth_fault_refuses_one_refresh_as_the_oauth_server_does(
    server, portal, kind, status, description
):
    _, refresh_token = tokens(server, portal)
    add_fault(server, portal, target="oauth", kind=kind)

    refused = refresh(server, refresh_token)
    refreshed = refresh(server, refresh_token)

    assert refused.status_code == status
    assert refused.headers["Content-Type"] == "application/json"
    assert refused.json() == {"error": kind, "error_description": description}
    # The refused request used nothing up: the same refresh token still works once.
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["member_id"] == portal.member_id
    assert server.sandbox.refresh_requests == {portal.member_id: 2}
    assert server.sandbox.refresh_counts == {portal.member_id: 1}
    assert listed_faults(server, portal) == []


def test_an_oauth_fault_leaves_other_portals_alone(server, portal):
    other = server.sandbox.create_portal()
    server.sandbox.finish_install(other.member_id)
    add_fault(server, portal, target="oauth", kind="invalid_grant", times=None)

    response = refresh(server, tokens(server, other)[1])

    assert response.status_code == 200
    assert refresh(server, tokens(server, portal)[1]).status_code == 400


def test_refresh_requests_count_failed_refreshes_too(server, portal):
    _, refresh_token = tokens(server, portal)

    first = refresh(server, refresh_token)
    again = refresh(server, refresh_token)
    unknown = refresh(server, "not-a-refresh-token")

    assert (first.status_code, again.status_code, unknown.status_code) == (200, 400, 400)
    assert server.sandbox.refresh_requests == {portal.member_id: 2}
    assert server.sandbox.refresh_counts == {portal.member_id: 1}


def test_an_app_info_fault_touches_app_info_only(server, portal):
    access_token, refresh_token = tokens(server, portal)
    add_fault(server, portal, target="oauth", kind="NO_AUTH_FOUND", method="app.info")

    refreshed = refresh(server, refresh_token)
    refused = app_info(server, refreshed.json()["access_token"])
    answered = app_info(server, refreshed.json()["access_token"])

    assert refreshed.status_code == 200
    assert refused.status_code == 401
    assert refused.json() == {
        "error": "NO_AUTH_FOUND",
        "error_description": "Wrong authorization data",
    }
    assert answered.status_code == 200
    assert answered.json()["result"]["install"]["member_id"] == portal.member_id


def test_a_refresh_fault_leaves_app_info_alone(server, portal):
    access_token, _ = tokens(server, portal)
    add_fault(server, portal, target="oauth", kind="invalid_grant")

    assert app_info(server, access_token).status_code == 200
    assert [fault["kind"] for fault in listed_faults(server, portal)] == ["invalid_grant"]


# The portal's REST refusals.


@pytest.mark.parametrize(
    ("kind", "status", "description"),
    [
        ("QUERY_LIMIT_EXCEEDED", 503, "Too many requests"),
        ("OPERATION_TIME_LIMIT", 429, "Method is blocked due to operation time limit."),
        ("INTERNAL_SERVER_ERROR", 500, "Internal server error"),
        ("PORTAL_DELETED", 403, "Portal was deleted"),
        ("PAYMENT_REQUIRED", 401, "Subscription has been ended"),
        ("APPLICATION_NOT_FOUND", 401, "Application not found"),
        ("ERROR_OAUTH", 401, "Application not installed"),
        ("NO_AUTH_FOUND", 401, "Wrong authorization data"),
        ("OVERLOAD_LIMIT", 503, "REST API is blocked due to overload"),
    ],
)
def test_a_rest_fault_refuses_one_call_as_the_portal_does(
    server, portal, kind, status, description
):
    access_token, _ = tokens(server, portal)
    add_fault(server, portal, target="rest", kind=kind)

    refused = rest(server, "server.time", access_token)
    answered = rest(server, "server.time", access_token)

    assert refused.status_code == status
    assert refused.json() == {"error": kind, "error_description": description}
    # A browser calls the portal from the app's origin and must be able to read the refusal.
    assert refused.headers["Access-Control-Allow-Origin"] == "*"
    assert answered.status_code == 200
    assert "result" in answered.json()


def test_a_fault_answers_as_many_times_as_it_was_told(server, portal):
    access_token, _ = tokens(server, portal)
    add_fault(server, portal, target="rest", kind="INTERNAL_SERVER_ERROR", times=2)

    statuses = [rest(server, "server.time", access_token).status_code for _ in range(3)]

    assert statuses == [500, 500, 200]


def test_a_fault_without_times_answers_until_cleared(server, portal):
    access_token, _ = tokens(server, portal)
    added = add_fault(server, portal, target="rest", kind="OVERLOAD_LIMIT", times=None)

    statuses = [rest(server, "server.time", access_token).status_code for _ in range(3)]
    listed = listed_faults(server, portal)
    cleared = requests.delete(faults_url(server, portal), timeout=10)

    assert statuses == [503, 503, 503]
    assert added["times"] is None
    assert listed == [added]
    assert cleared.status_code == 200
    assert cleared.json() == {"cleared": 1}
    assert listed_faults(server, portal) == []
    assert rest(server, "server.time", access_token).status_code == 200


def test_the_listing_shows_what_is_left_of_a_fault(server, portal):
    access_token, _ = tokens(server, portal)
    added = add_fault(server, portal, target="rest", kind="NO_AUTH_FOUND", times=3)

    rest(server, "server.time", access_token)

    assert added == {
        "id": added["id"],
        "member_id": portal.member_id,
        "target": "rest",
        "kind": "NO_AUTH_FOUND",
        "times": 3,
        "method": None,
        "delay": None,
    }
    assert listed_faults(server, portal) == [{**added, "times": 2}]


def test_faults_answer_in_the_order_they_were_added(server, portal):
    _, refresh_token = tokens(server, portal)
    add_fault(server, portal, target="oauth", kind="html_error")
    add_fault(server, portal, target="oauth", kind="NOT_INSTALLED")

    answers = [refresh(server, refresh_token) for _ in range(3)]

    assert [answer.status_code for answer in answers] == [502, 401, 200]
    assert answers[1].json()["error"] == "NOT_INSTALLED"


def test_a_method_fault_refuses_that_method_only(server, portal):
    access_token, _ = tokens(server, portal)
    add_fault(
        server,
        portal,
        target="rest",
        kind="QUERY_LIMIT_EXCEEDED",
        method="Pull.Application.Event.Add",
    )

    other = rest(server, "server.time", access_token)
    batch = rest(
        server, "batch", access_token, cmd={"ping": "pull.application.event.add?COMMAND=ping"}
    )
    refused = rest(server, "pull.application.event.add.json", access_token, COMMAND="ping")
    answered = rest(server, "pull.application.event.add", access_token, COMMAND="ping")

    assert other.status_code == 200
    # A batch is one request, to the method batch.
    assert batch.status_code == 200
    assert batch.json()["result"]["result"] == {"ping": True}
    assert refused.status_code == 503
    assert refused.json()["error"] == "QUERY_LIMIT_EXCEEDED"
    assert answered.status_code == 200


def test_a_rest_fault_leaves_other_portals_and_the_oauth_server_alone(server, portal):
    other = server.sandbox.create_portal()
    server.sandbox.finish_install(other.member_id)
    access_token, refresh_token = tokens(server, portal)
    add_fault(server, portal, target="rest", kind="PORTAL_DELETED", times=None)

    assert rest(server, "server.time", tokens(server, other)[0]).status_code == 200
    assert refresh(server, refresh_token).status_code == 200
    assert app_info(server, tokens(server, portal)[0]).status_code == 200
    # The refresh used this access token up, and the portal still answers it with the fault.
    assert rest(server, "server.time", access_token).status_code == 403


def test_a_fault_also_meets_a_call_with_an_expired_token(server, portal):
    access_token, _ = tokens(server, portal)
    server.sandbox.expire_access_tokens(portal.member_id)
    add_fault(server, portal, target="rest", kind="INTERNAL_SERVER_ERROR")

    refused = rest(server, "server.time", access_token)
    expired = rest(server, "server.time", access_token)

    assert refused.status_code == 500
    assert expired.status_code == 401
    assert expired.json()["error"] == "expired_token"


def test_a_renamed_portal_redirects_and_the_repeated_call_succeeds(server, portal):
    access_token, _ = tokens(server, portal)
    add_fault(server, portal, target="rest", kind="redirect")

    moved = rest(server, "pull.application.event.add", access_token, COMMAND="ping")
    again = requests.post(
        moved.headers["Location"], json={"auth": access_token, "COMMAND": "ping"}, timeout=10
    )

    assert moved.status_code == 302
    assert moved.headers["Location"] == f"{server.sandbox_url}/rest/pull.application.event.add"
    assert moved.content == b""
    assert again.status_code == 200
    assert again.json()["result"] is True
    assert [message.command for message in server.sandbox.pushed_messages] == ["ping"]


# Answers that are no protocol error, on both targets.


def call_target(server, portal, target, timeout=10):
    """Make one request to ``target`` with fresh tokens of the portal's admin."""
    access_token, refresh_token = tokens(server, portal)
    if target == "oauth":
        return refresh(server, refresh_token, timeout=timeout)
    return rest(server, "server.time", access_token, timeout=timeout)


@pytest.mark.parametrize("target", ["oauth", "rest"])
def test_an_html_error_page_is_a_502_that_is_no_json(server, portal, target):
    add_fault(server, portal, target=target, kind="html_error")

    response = call_target(server, portal, target)

    assert response.status_code == 502
    assert response.headers["Content-Type"].startswith("text/html")
    assert "<title>502 Bad Gateway</title>" in response.text
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.text)
    assert call_target(server, portal, target).status_code == 200


@pytest.mark.parametrize("target", ["oauth", "rest"])
def test_an_empty_error_is_a_500_with_no_body(server, portal, target):
    add_fault(server, portal, target=target, kind="empty_error")

    response = call_target(server, portal, target)

    assert response.status_code == 500
    assert response.content == b""
    assert call_target(server, portal, target).status_code == 200


@pytest.mark.parametrize("target", ["oauth", "rest"])
def test_a_dropped_connection_gets_no_answer_at_all(server, portal, target):
    add_fault(server, portal, target=target, kind="drop_connection")

    with pytest.raises(requests.ConnectionError):
        call_target(server, portal, target)

    assert call_target(server, portal, target).status_code == 200


def test_a_dropped_connection_is_an_empty_500_where_the_server_cannot_drop_it(
    app, client, sandbox, caplog
):
    portal = sandbox.create_portal()
    sandbox.finish_install(portal.member_id)
    sandbox.add_fault(portal.member_id, "rest", "drop_connection")
    access_token = sandbox.frame_launch(portal.member_id).form["AUTH_ID"]

    response = client.post(
        "/rest/server.time", json={"auth": access_token}, base_url=app.config["SANDBOX_URL"]
    )

    assert response.status_code == 500
    assert response.data == b""
    assert f"Portal {portal.member_id}: this server cannot drop a connection" in caplog.text


@pytest.mark.parametrize("target", ["oauth", "rest"])
def test_a_slow_answer_times_the_client_out_and_then_answers_normally(server, portal, target):
    add_fault(server, portal, target=target, kind="slow", delay=1.0, times=2)

    with pytest.raises(requests.Timeout):
        call_target(server, portal, target, timeout=0.3)
    started = time.monotonic()
    patient = call_target(server, portal, target)
    waited = time.monotonic() - started

    assert patient.status_code == 200
    assert waited >= 1.0
    assert "error" not in patient.json()


def test_a_refresh_the_client_gave_up_on_still_uses_the_refresh_token_up(server, portal):
    _, refresh_token = tokens(server, portal)
    add_fault(server, portal, target="oauth", kind="slow", delay=0.5)

    with pytest.raises(requests.Timeout):
        refresh(server, refresh_token, timeout=0.1)
    wait_for(lambda: server.sandbox.refresh_counts == {portal.member_id: 1})
    retried = refresh(server, refresh_token)

    assert retried.status_code == 400
    assert retried.json()["error"] == "invalid_grant"
    assert server.sandbox.refresh_requests == {portal.member_id: 2}


def test_a_delay_comes_before_any_kind_of_answer(server, portal):
    add_fault(server, portal, target="rest", kind="OPERATION_TIME_LIMIT", delay=0.5)

    started = time.monotonic()
    response = call_target(server, portal, "rest")

    assert time.monotonic() - started >= 0.5
    assert response.status_code == 429


# Arranging faults: the state's methods and the control endpoints.


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (
            {"target": "portal", "kind": "invalid_grant"},
            "target must be one of oauth, rest, events; got 'portal'.",
        ),
        ({"kind": "invalid_grant"}, "target must be one of oauth, rest, events; got None."),
        (
            {"target": "rest", "kind": "invalid_grant"},
            "kind 'invalid_grant' is not a fault of rest; it may be one of "
            "QUERY_LIMIT_EXCEEDED, OPERATION_TIME_LIMIT, INTERNAL_SERVER_ERROR, PORTAL_DELETED, "
            "PAYMENT_REQUIRED, APPLICATION_NOT_FOUND, ERROR_OAUTH, NO_AUTH_FOUND, "
            "OVERLOAD_LIMIT, html_error, empty_error, slow, drop_connection, redirect.",
        ),
        (
            {"target": "oauth", "kind": "redirect"},
            "kind 'redirect' is not a fault of oauth; it may be one of invalid_grant, "
            "invalid_client, wrong_client, PAYMENT_REQUIRED, NOT_INSTALLED, NO_AUTH_FOUND, "
            "PORTAL_DELETED, html_error, empty_error, slow, drop_connection.",
        ),
        (
            {"target": "rest", "kind": "NO_AUTH_FOUND", "times": 0},
            "times must be a positive integer or null; got 0.",
        ),
        (
            {"target": "rest", "kind": "NO_AUTH_FOUND", "times": "2"},
            "times must be a positive integer or null; got '2'.",
        ),
        (
            {"target": "rest", "kind": "NO_AUTH_FOUND", "times": True},
            "times must be a positive integer or null; got True.",
        ),
        (
            {"target": "rest", "kind": "NO_AUTH_FOUND", "method": ""},
            "method must be a method name or null; got ''.",
        ),
        (
            {"target": "oauth", "kind": "invalid_grant", "method": "server.time"},
            "method of an oauth fault must be null (the token endpoint) or app.info; "
            "got 'server.time'.",
        ),
        (
            {"target": "rest", "kind": "slow"},
            "A slow fault needs a delay of more than 0 seconds.",
        ),
        (
            {"target": "events", "kind": "late"},
            "A late fault needs a delay of more than 0 seconds.",
        ),
        (
            {"target": "events", "kind": "invalid_grant"},
            "kind 'invalid_grant' is not a fault of events; it may be one of "
            "duplicate, late, wrong_token, lost.",
        ),
        (
            {"target": "rest", "kind": "slow", "delay": -1},
            "delay must be a number of seconds from 0 to 300; got -1.",
        ),
        (
            {"target": "rest", "kind": "slow", "delay": 301},
            "delay must be a number of seconds from 0 to 300; got 301.",
        ),
        (
            {"target": "rest", "kind": "slow", "delay": "1"},
            "delay must be a number of seconds from 0 to 300; got '1'.",
        ),
        (
            {"target": "rest", "kind": "NO_AUTH_FOUND", "when": "now"},
            "Unknown field(s): when.",
        ),
    ],
)
def test_a_bad_fault_is_refused_with_400_and_nothing_changes(server, portal, fault, message):
    response = requests.post(faults_url(server, portal), json=fault, timeout=10)

    assert response.status_code == 400
    assert response.json() == {"error": "INVALID_REQUEST", "error_description": message}
    assert listed_faults(server, portal) == []


@pytest.mark.parametrize(
    "options",
    [
        {"data": "target=rest&kind=NO_AUTH_FOUND"},
        {"data": "[]"},
        {"json": ["rest"]},
        {"data": "[" * 100_000, "headers": {"Content-Type": "application/json"}},
        {"data": '{"target": "\\ud800"}', "headers": {"Content-Type": "application/json"}},
    ],
)
def test_a_fault_must_come_as_a_json_object(server, portal, options):
    response = requests.post(faults_url(server, portal), timeout=10, **options)

    assert response.status_code == 400
    assert response.json() == {
        "error": "INVALID_REQUEST",
        "error_description": "The body must be a JSON object.",
    }
    assert listed_faults(server, portal) == []


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_the_fault_endpoints_of_an_unknown_portal_are_404(server, method):
    response = requests.request(
        method,
        f"{server.sandbox_url}/portal/nosuchportal/faults",
        json={"target": "rest", "kind": "NO_AUTH_FOUND"},
        timeout=10,
    )

    assert response.status_code == 404
    assert response.json() == {
        "error": "INVALID_REQUEST",
        "error_description": "No sandbox portal has member_id 'nosuchportal'.",
    }


def test_the_fault_endpoints_are_not_served_to_the_app_host(server, portal):
    response = requests.get(f"{server.public_url}/portal/{portal.member_id}/faults", timeout=10)

    assert response.status_code == 404


def test_clearing_one_portals_faults_keeps_the_others(sandbox):
    first, second = sandbox.create_portal(), sandbox.create_portal()
    sandbox.add_fault(first.member_id, "rest", "NO_AUTH_FOUND")
    sandbox.add_fault(second.member_id, "oauth", "invalid_grant", times=None)

    assert sandbox.clear_faults(first.member_id) == 1
    assert sandbox.faults(first.member_id) == []
    assert [fault.kind for fault in sandbox.faults(second.member_id)] == ["invalid_grant"]
    assert sandbox.clear_faults() == 1
    assert sandbox.faults(second.member_id) == []


def test_add_fault_normalizes_the_method_and_refuses_an_unknown_portal(sandbox):
    portal = sandbox.create_portal()

    fault = sandbox.add_fault(
        portal.member_id, "rest", "slow", method=" Server.Time.JSON", delay=1
    )

    assert (fault.method, fault.delay) == ("server.time", 1.0)
    with pytest.raises(SandboxError, match="No sandbox portal has member_id 'x'"):
        sandbox.add_fault("x", "rest", "NO_AUTH_FOUND")
    with pytest.raises(SandboxError, match="kind 'nonsense' is not a fault of oauth"):
        sandbox.add_fault(portal.member_id, "oauth", "nonsense")


def test_faults_are_not_kept_across_a_restart(tmp_path, sandbox):
    portal = sandbox.create_portal()
    sandbox.add_fault(portal.member_id, "rest", "NO_AUTH_FOUND", times=None)

    restarted = build_app(tmp_path).extensions["sandbox"]

    assert restarted.faults(portal.member_id) == []


# Portal conditions.


@pytest.mark.parametrize(
    ("condition", "rest_status", "oauth_status", "error", "description"),
    [
        ("deleted", 403, 404, "PORTAL_DELETED", "Portal was deleted"),
        ("unpaid", 401, 401, "PAYMENT_REQUIRED", "Subscription has been ended"),
    ],
)
def test_a_portal_condition_refuses_every_call_and_refresh_until_changed(
    server, portal, condition, rest_status, oauth_status, error, description
):
    access_token, refresh_token = tokens(server, portal)

    answer = set_condition(server, portal, condition)
    calls = [rest(server, "server.time", access_token) for _ in range(3)]
    refused_refresh = refresh(server, refresh_token)
    shown = requests.get(f"{server.sandbox_url}/portal/{portal.member_id}/condition", timeout=10)
    back = set_condition(server, portal, None)

    assert answer.status_code == 200
    assert answer.json() == {"condition": condition}
    assert shown.json() == {"condition": condition}
    for call in calls:
        assert call.status_code == rest_status
        assert call.json() == {"error": error, "error_description": description}
    assert refused_refresh.status_code == oauth_status
    assert refused_refresh.json() == {"error": error, "error_description": description}
    assert back.json() == {"condition": None}
    assert rest(server, "server.time", access_token).status_code == 200
    assert refresh(server, refresh_token).status_code == 200
    assert server.sandbox.refresh_requests == {portal.member_id: 2}


def test_a_fault_answers_before_the_portals_condition(server, portal):
    access_token, _ = tokens(server, portal)
    set_condition(server, portal, "deleted")
    add_fault(server, portal, target="rest", kind="html_error")

    assert rest(server, "server.time", access_token).status_code == 502
    assert rest(server, "server.time", access_token).status_code == 403


def test_a_deleted_portals_app_info_still_answers(server, portal):
    access_token, _ = tokens(server, portal)
    set_condition(server, portal, "deleted")

    assert app_info(server, access_token).status_code == 200


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"condition": "closed"},
            "condition must be one of unpaid, deleted or null; got 'closed'.",
        ),
        ({}, 'The body must be a JSON object with "condition" and nothing else.'),
        (
            {"condition": None, "user": 1},
            'The body must be a JSON object with "condition" and nothing else.',
        ),
    ],
)
def test_a_bad_condition_is_refused_with_400_and_nothing_changes(server, portal, body, message):
    set_condition(server, portal, "unpaid")

    response = requests.post(
        f"{server.sandbox_url}/portal/{portal.member_id}/condition", json=body, timeout=10
    )

    assert response.status_code == 400
    assert response.json() == {"error": "INVALID_REQUEST", "error_description": message}
    assert server.sandbox.get_portal(portal.member_id).condition == "unpaid"


def test_a_portal_condition_survives_a_server_restart(live_server_factory):
    server = live_server_factory()
    portal = server.sandbox.create_portal()
    server.sandbox.finish_install(portal.member_id)
    access_token, _ = tokens(server, portal)
    set_condition(server, portal, "deleted")
    port = server.port
    server.stop()

    server = live_server_factory(port=port)
    response = rest(server, "server.time", access_token)

    assert server.sandbox.get_portal(portal.member_id).condition == "deleted"
    assert response.status_code == 403
    assert response.json()["error"] == "PORTAL_DELETED"


def test_a_state_file_written_before_conditions_still_loads(tmp_path, app, sandbox):
    portal = sandbox.create_portal()
    path = app.config["SANDBOX_STATE_FILE"]
    with open(path, encoding="utf-8") as file:
        stored = json.load(file)
    for record in stored["portals"]:
        del record["condition"]
    with open(path, "w", encoding="utf-8") as file:
        json.dump(stored, file)

    restarted = build_app(tmp_path).extensions["sandbox"]

    assert restarted.get_portal(portal.member_id).condition is None
    assert restarted.get_portal(portal.member_id).users == portal.users


def test_a_state_file_with_an_unknown_condition_is_set_aside(tmp_path, app, sandbox, caplog):
    portal = sandbox.create_portal()
    sandbox.set_portal_condition(portal.member_id, "unpaid")
    path = app.config["SANDBOX_STATE_FILE"]
    with open(path, encoding="utf-8") as file:
        text = file.read()
    with open(path, "w", encoding="utf-8") as file:
        file.write(text.replace('"unpaid"', '"closed"'))
    caplog.set_level(logging.WARNING)

    restarted = build_app(tmp_path).extensions["sandbox"]

    assert restarted.portals == []
    assert "unexpected content (ValueError)" in caplog.text


def test_the_portal_page_offers_the_condition_and_tells_it(server, portal):
    before = requests.get(f"{server.sandbox_url}/portal/{portal.member_id}/?user=1", timeout=10)
    set_condition(server, portal, "unpaid")
    after = requests.get(f"{server.sandbox_url}/portal/{portal.member_id}/?user=1", timeout=10)

    assert 'id="condition-select"' in before.text
    assert 'id="condition-notice"' not in before.text
    assert '<option value="unpaid" selected>' in after.text
    assert "with PAYMENT_REQUIRED." in after.text


# The rate limit.


def test_the_rate_limit_refuses_a_request_over_the_bucket_until_it_drains(live_server_factory):
    server = live_server_factory(env={"SANDBOX_RATE_LIMIT": "3", "SANDBOX_RATE_DRAIN": "1"})
    portal = server.sandbox.create_portal()
    server.sandbox.finish_install(portal.member_id)
    access_token, _ = tokens(server, portal)

    passed = [rest(server, "server.time", access_token).status_code for _ in range(3)]
    refused = [rest(server, "server.time", access_token) for _ in range(5)]
    time.sleep(1.1)
    drained = rest(server, "server.time", access_token)
    full_again = rest(server, "server.time", access_token)

    assert passed == [200, 200, 200]
    for response in refused:
        assert response.status_code == 503
        assert response.json() == {
            "error": "QUERY_LIMIT_EXCEEDED",
            "error_description": "Too many requests",
        }
    # Refused requests were not counted, so one second of draining frees one request.
    assert drained.status_code == 200
    assert full_again.status_code == 503


def test_the_rate_limit_counts_a_batch_once_and_errors_too_per_portal(live_server_factory):
    server = live_server_factory(env={"SANDBOX_RATE_LIMIT": "3", "SANDBOX_RATE_DRAIN": "0.1"})
    portal = server.sandbox.create_portal()
    other = server.sandbox.create_portal()
    server.sandbox.finish_install(portal.member_id)
    access_token, _ = tokens(server, portal)
    server.sandbox.frame_launch(other.member_id)

    batch = rest(server, "batch", access_token, cmd={f"c{n}": "server.time" for n in range(10)})
    unknown_method = rest(server, "no.such.method", access_token)
    after = [rest(server, "server.time", access_token).status_code for _ in range(2)]
    other_portal = rest(server, "server.time", tokens(server, other)[0])

    assert batch.status_code == 200
    assert len(batch.json()["result"]["result"]) == 10
    assert unknown_method.status_code == 404
    assert after == [200, 503]
    assert other_portal.status_code == 200


def test_the_refresh_endpoint_has_no_rate_limit(live_server_factory):
    server = live_server_factory(env={"SANDBOX_RATE_LIMIT": "1", "SANDBOX_RATE_DRAIN": "0.1"})
    portal = server.sandbox.create_portal()
    server.sandbox.finish_install(portal.member_id)
    _, refresh_token = tokens(server, portal)

    for _ in range(3):
        answer = refresh(server, refresh_token)
        assert answer.status_code == 200
        refresh_token = answer.json()["refresh_token"]


@pytest.mark.parametrize(
    "env", [{"SANDBOX_RATE_LIMIT": "0"}, {"SANDBOX_RATE_LIMIT": "2", "SANDBOX_RATE_DRAIN": "0"}]
)
def test_a_zero_setting_turns_the_rate_limit_off(live_server_factory, env):
    server = live_server_factory(env=env)
    portal = server.sandbox.create_portal()
    server.sandbox.finish_install(portal.member_id)
    access_token, _ = tokens(server, portal)

    statuses = {rest(server, "server.time", access_token).status_code for _ in range(60)}

    assert statuses == {200}


def test_the_default_rate_limit_is_a_cloud_portals(app, sandbox):
    assert (app.config["SANDBOX_RATE_LIMIT"], app.config["SANDBOX_RATE_DRAIN"]) == (50, 2.0)
    assert (sandbox.rate_limit, sandbox.rate_drain) == (50, 2.0)
    portal = sandbox.create_portal()

    admitted = [sandbox.admit_rest_request(portal.member_id) for _ in range(51)]

    assert admitted == [True] * 50 + [False]
