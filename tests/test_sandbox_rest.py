"""The sandbox portal's REST API: envelopes, auth errors, CORS, methods, batch and pull."""

import json

import pytest

from tests.conftest import TIME_KEYS


@pytest.fixture
def portal(sandbox):
    portal = sandbox.create_portal()
    sandbox.finish_install(portal.member_id)
    return portal


@pytest.fixture
def admin_token(sandbox, portal):
    return sandbox.frame_launch(portal.member_id, user_id=1).form["AUTH_ID"]


@pytest.fixture
def user_token(sandbox, portal):
    return sandbox.frame_launch(portal.member_id, user_id=2).form["AUTH_ID"]


@pytest.fixture
def call(client, app):
    def call(method, auth=None, **params):
        body = dict(params)
        if auth is not None:
            body["auth"] = auth
        return client.post(f"/rest/{method}", json=body, base_url=app.config["SANDBOX_URL"])

    return call


def test_server_time_success_envelope(call, admin_token):
    response = call("server.time", admin_token)

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert set(response.json) == {"result", "time"}
    assert set(response.json["time"]) == TIME_KEYS
    assert response.json["result"].endswith("+00:00")


@pytest.mark.parametrize("path", ["/rest/SERVER.TIME", "/rest/server.time.json"])
def test_method_names_ignore_case_and_json_suffix(client, app, admin_token, path):
    response = client.get(
        path, query_string={"auth": admin_token}, base_url=app.config["SANDBOX_URL"]
    )

    assert response.status_code == 200


@pytest.mark.parametrize("where", ["form", "query_auth", "query_access_token"])
def test_auth_is_read_from_form_and_query(client, app, admin_token, where):
    options = {
        "form": {"data": {"auth": admin_token}},
        "query_auth": {"query_string": {"auth": admin_token}},
        "query_access_token": {"query_string": {"access_token": admin_token}},
    }[where]

    response = client.post("/rest/user.admin", base_url=app.config["SANDBOX_URL"], **options)

    assert response.status_code == 200
    assert response.json["result"] is True


@pytest.mark.parametrize("auth", [None, "unknown-token"])
def test_missing_or_unknown_token_is_no_auth_found(call, auth):
    response = call("server.time", auth)

    assert response.status_code == 401
    assert response.json == {
        "error": "NO_AUTH_FOUND",
        "error_description": "Wrong authorization data",
    }


def test_expired_token(call, sandbox, portal, admin_token):
    sandbox.expire_access_tokens(portal.member_id)

    response = call("profile", admin_token)

    assert response.status_code == 401
    assert response.json == {
        "error": "expired_token",
        "error_description": "The access token provided has expired.",
    }
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_unknown_method(call, admin_token):
    response = call("no.such.method", admin_token)

    assert response.status_code == 404
    assert response.json == {
        "error": "ERROR_METHOD_NOT_FOUND",
        "error_description": "Method not found!",
    }


@pytest.mark.parametrize("method", ["crm.deal.list", "user.current", "tasks.task.add"])
def test_method_outside_scope_is_insufficient_scope(call, admin_token, method):
    response = call(method, admin_token)

    assert response.status_code == 403
    assert response.json["error"] == "insufficient_scope"


def test_invalid_json_body(client, app, admin_token):
    response = client.post(
        "/rest/server.time",
        data="{not json",
        content_type="application/json",
        base_url=app.config["SANDBOX_URL"],
    )

    assert response.status_code == 400
    assert response.json["error"] == "INVALID_REQUEST"


def test_cors_preflight(client, app):
    response = client.options(
        "/rest/pull.application.event.add",
        headers={
            "Origin": app.config["PUBLIC_URL"],
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
        base_url=app.config["SANDBOX_URL"],
    )

    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert response.headers["Access-Control-Allow-Headers"] == "content-type"


def test_app_info(call, sandbox, portal, admin_token, app):
    response = call("app.info", admin_token)

    assert response.status_code == 200
    assert response.json["result"] == {
        "ID": portal.app_id,
        "CODE": app.config["B24_CLIENT_ID"],
        "VERSION": 1,
        "STATUS": "L",
        "INSTALLED": True,
        "PAYMENT_EXPIRED": "N",
        "DAYS": None,
        "LANGUAGE_ID": "en",
        "LICENSE": "en_project",
        "LICENSE_PREVIOUS": "en_project",
        "LICENSE_TYPE": "project",
        "LICENSE_FAMILY": "project",
    }


@pytest.mark.parametrize(
    "user_id, expected",
    [
        (1, {"ID": "1", "ADMIN": True, "NAME": "Anna", "LAST_NAME": "Admin"}),
        (2, {"ID": "2", "ADMIN": False, "NAME": "Nick", "LAST_NAME": "User"}),
    ],
)
def test_profile_and_user_admin(call, sandbox, portal, user_id, expected):
    token = sandbox.frame_launch(portal.member_id, user_id=user_id).form["AUTH_ID"]

    profile = call("profile", token).json["result"]
    admin = call("user.admin", token).json["result"]

    assert {key: profile[key] for key in expected} == expected
    assert set(profile) == {
        "ID",
        "ADMIN",
        "NAME",
        "LAST_NAME",
        "PERSONAL_GENDER",
        "PERSONAL_PHOTO",
        "TIME_ZONE",
        "TIME_ZONE_OFFSET",
    }
    assert admin is expected["ADMIN"]


# Event handlers.


def test_event_bind_get_unbind(call, sandbox, portal, admin_token, app):
    handler = app.config["PUBLIC_URL"] + "/events"

    bound = call("event.bind", admin_token, event="onAppInstall", handler=handler)
    listed = call("event.get", admin_token)
    unbound = call("event.unbind", admin_token, event="ONAPPINSTALL", handler=handler)

    assert bound.status_code == 200
    assert bound.json["result"] is True
    assert listed.json["result"] == [
        {"event": "ONAPPINSTALL", "handler": handler, "auth_type": "0", "offline": 0}
    ]
    assert unbound.json["result"] == {"count": 1}
    assert sandbox.bound_events(portal.member_id) == []


def test_event_bind_twice_is_error_core(call, sandbox, portal, admin_token, app):
    handler = app.config["PUBLIC_URL"] + "/events"
    call("event.bind", admin_token, event="ONAPPUNINSTALL", handler=handler)

    response = call("event.bind", admin_token, event="ONAPPUNINSTALL", handler=handler)

    assert response.status_code == 400
    assert response.json == {
        "error": "ERROR_CORE",
        "error_description": "Unable to set event handler: Handler already binded",
    }
    assert len(sandbox.bound_events(portal.member_id)) == 1


@pytest.mark.parametrize(
    "params, status, error",
    [
        (
            {"event": "ONNOSUCHEVENT", "handler": "http://127.0.0.1/e"},
            400,
            "ERROR_EVENT_NOT_FOUND",
        ),
        ({"handler": "http://127.0.0.1/e"}, 400, "ERROR_EVENT_NOT_FOUND"),
        ({"event": "ONAPPINSTALL"}, 400, "ERROR_WRONG_HANDLER_URL"),
        (
            {"event": "ONAPPINSTALL", "handler": "http://localhost/e"},
            400,
            "ERROR_WRONG_HANDLER_URL",
        ),
        (
            {"event": "ONAPPINSTALL", "handler": "ftp://127.0.0.1/e"},
            400,
            "ERROR_UNSUPPORTED_PROTOCOL",
        ),
        ({"event": "ONAPPINSTALL", "handler": ["x"]}, 400, "ERROR_WRONG_HANDLER_URL"),
        (
            {"event": "ONAPPINSTALL", "handler": "http://127.0.0.1/e", "auth_type": "x"},
            400,
            "ERROR_ARGUMENT",
        ),
    ],
)
def test_event_bind_rejects_bad_input(call, sandbox, portal, admin_token, params, status, error):
    response = call("event.bind", admin_token, **params)

    assert response.status_code == status
    assert response.json["error"] == error
    assert sandbox.bound_events(portal.member_id) == []


@pytest.mark.parametrize("params", [{"auth_type": 1}, {"event_type": "offline"}])
def test_event_bind_admin_only_options_are_access_denied(
    call, sandbox, portal, user_token, params
):
    response = call(
        "event.bind", user_token, event="ONAPPUNINSTALL", handler="http://127.0.0.1/e", **params
    )

    assert response.status_code == 403
    assert response.json["error"] == "ACCESS_DENIED"
    assert sandbox.bound_events(portal.member_id) == []


# Batch.


def test_batch_shape_as_the_js_sdk_sends_it(call, admin_token):
    response = call(
        "batch", admin_token, halt=1, cmd={"get_app": "app.info?", "get_profile": "profile?"}
    )

    assert response.status_code == 200
    assert set(response.json["time"]) == TIME_KEYS
    batch = response.json["result"]
    assert set(batch) == {"result", "result_error", "result_total", "result_next", "result_time"}
    assert batch["result"]["get_app"]["LICENSE"] == "en_project"
    assert batch["result"]["get_profile"]["ID"] == "1"
    assert batch["result_error"] == []
    assert set(batch["result_time"]["get_app"]) == TIME_KEYS


def test_batch_parses_bracketed_params(call, sandbox, portal, admin_token):
    response = call(
        "batch",
        admin_token,
        cmd={
            "push": "pull.application.event.add?COMMAND=hello&PARAMS[a]=1&PARAMS[list][]=x"
            "&PARAMS[list][]=y&MODULE_ID=main"
        },
    )

    assert response.json["result"]["result"] == {"push": True}
    message = sandbox.pushed_messages[-1]
    assert message.params == {"a": "1", "list": ["x", "y"]}
    assert message.module_id == "main"
    assert message.command == "hello"


def test_batch_refers_to_earlier_results(call, sandbox, portal, admin_token):
    response = call(
        "batch",
        admin_token,
        cmd=["profile?", "pull.application.event.add?COMMAND=me&PARAMS[id]=$result[0][ID]"],
    )

    assert response.json["result"]["result"] == [response.json["result"]["result"][0], True]
    assert sandbox.pushed_messages[-1].params == {"id": "1"}


def test_batch_collects_errors_and_halts(call, admin_token):
    commands = {"a": "no.such.method?", "b": "server.time?", "c": "batch?"}

    going_on = call("batch", admin_token, halt=0, cmd=commands).json["result"]
    halted = call("batch", admin_token, halt=1, cmd=commands).json["result"]

    assert going_on["result_error"]["a"] == {
        "error": "ERROR_METHOD_NOT_FOUND",
        "error_description": "Method not found!",
    }
    assert going_on["result_error"]["c"]["error"] == "ERROR_BATCH_METHOD_NOT_ALLOWED"
    assert "b" in going_on["result"]
    assert halted["result"] == []
    assert list(halted["result_error"]) == ["a"]


def test_batch_over_fifty_commands(call, admin_token):
    commands = {f"c{index}": "server.time?" for index in range(51)}

    response = call("batch", admin_token, cmd=commands)

    assert response.status_code == 400
    assert response.json["error"] == "ERROR_BATCH_LENGTH_EXCEEDED"


def test_batch_needs_a_valid_token(call, sandbox, portal, admin_token):
    sandbox.expire_access_tokens(portal.member_id)

    response = call("batch", admin_token, cmd={"a": "server.time?"})

    assert response.status_code == 401
    assert response.json["error"] == "expired_token"


# Push & Pull.


def test_pull_config(call, sandbox, portal, admin_token, user_token):
    admin = call("pull.application.config.get", admin_token).json["result"]
    user = call("pull.application.config.get", user_token).json["result"]

    assert admin["server"]["version"] == 5
    assert admin["server"]["websocket_enabled"] is True
    assert admin["server"]["websocket"] == "ws://localhost:5000/subws/"
    assert admin["server"]["config_timestamp"] > 0
    assert admin["channels"]["private"]["type"] == "private"
    assert admin["channels"]["shared"]["type"] == "shared"
    assert admin["channels"]["shared"]["id"] == user["channels"]["shared"]["id"]
    assert admin["channels"]["private"]["id"] != user["channels"]["private"]["id"]
    assert admin["channels"]["private"]["id"] == sandbox.private_channel(portal.member_id, 1).id
    assert admin["exp"] > sandbox.started_at + 23 * 3600
    assert "serverTime" in admin


def test_pull_event_add_to_shared_channel(call, sandbox, portal, user_token):
    response = call("pull.application.event.add", user_token, COMMAND="hello", PARAMS={"a": 1})

    assert response.status_code == 200
    assert response.json["result"] is True
    message = sandbox.pushed_messages[-1]
    assert message.member_id == portal.member_id
    assert message.channel == sandbox.shared_channel(portal.member_id).id
    assert message.module_id == "application"
    assert message.params == {"a": 1}


def test_pull_event_add_accepts_json_string_params_and_lower_case_keys(call, sandbox, admin_token):
    response = call("pull.application.event.add", admin_token, command="x", params='{"b": [1, 2]}')

    assert response.json["result"] is True
    assert sandbox.pushed_messages[-1].params == {"b": [1, 2]}


@pytest.mark.parametrize(
    "params, error",
    [
        ({}, "COMMAND_ERROR"),
        ({"COMMAND": "bad command!"}, "COMMAND_ERROR"),
        ({"COMMAND": {"x": 1}}, "COMMAND_ERROR"),
        ({"COMMAND": "x", "PARAMS": "not json"}, "PARAMS_ERROR"),
        ({"COMMAND": "x", "PARAMS": 5}, "PARAMS_ERROR"),
        ({"COMMAND": "x", "PARAMS": '"a string"'}, "PARAMS_ERROR"),
        ({"COMMAND": "x", "MODULE_ID": "Main"}, "MODULE_ID_ERROR"),
        ({"COMMAND": "x", "MODULE_ID": "my-app"}, "MODULE_ID_ERROR"),
        ({"COMMAND": "x", "MODULE_ID": ""}, "MODULE_ID_ERROR"),
    ],
)
def test_pull_event_add_validation(call, sandbox, admin_token, params, error):
    response = call("pull.application.event.add", admin_token, **params)

    assert response.status_code == 400
    assert response.json["error"] == error
    assert not sandbox.pushed_messages


@pytest.mark.parametrize("user_id", [2, ["2"], "1", 1])
def test_pull_event_add_non_admin_user_id_rules(call, sandbox, user_token, user_id):
    response = call("pull.application.event.add", user_token, COMMAND="x", USER_ID=user_id)

    assert response.status_code == 400
    assert response.json == {
        "error": "USER_ID_ACCESS_ERROR",
        "error_description": "Only admin can send notifications to other channels",
    }
    assert not sandbox.pushed_messages


def test_pull_event_add_non_admin_own_id_as_string(call, sandbox, portal, user_token):
    response = call("pull.application.event.add", user_token, COMMAND="x", USER_ID="2")

    assert response.json["result"] is True
    assert sandbox.pushed_messages[-1].channel == sandbox.private_channel(portal.member_id, 2).id


@pytest.mark.parametrize(
    "user_id, users", [(2, [2]), ("2", [2]), ([1, 2], [1, 2]), ("[1, 2]", [1, 2]), (0, [0])]
)
def test_pull_event_add_admin_user_ids(call, sandbox, portal, admin_token, user_id, users):
    response = call("pull.application.event.add", admin_token, COMMAND="x", USER_ID=user_id)

    assert response.json["result"] is True
    assert [message.user_id for message in sandbox.pushed_messages] == users
    assert len({message.mid for message in sandbox.pushed_messages}) == len(users)


def test_pull_event_add_admin_bad_user_id(call, sandbox, admin_token):
    response = call("pull.application.event.add", admin_token, COMMAND="x", USER_ID="abc")

    assert response.status_code == 400
    assert response.json["error"] == "USER_ID_ERROR"
    assert not sandbox.pushed_messages


# Several portals.


def test_portals_are_kept_apart(call, sandbox, portal, admin_token):
    other = sandbox.create_portal()
    other_token = sandbox.frame_launch(other.member_id).form["AUTH_ID"]

    call("event.bind", admin_token, event="ONAPPINSTALL", handler="http://127.0.0.1/a")
    call("pull.application.event.add", other_token, COMMAND="x")

    assert call("app.info", other_token).json["result"]["INSTALLED"] is False
    assert call("app.info", admin_token).json["result"]["INSTALLED"] is True
    assert call("event.get", other_token).json["result"] == []
    assert sandbox.pushed_messages[-1].member_id == other.member_id
    assert sandbox.pushed_messages[-1].channel == sandbox.shared_channel(other.member_id).id
    assert (
        sandbox.shared_channel(other.member_id).id != sandbox.shared_channel(portal.member_id).id
    )
    assert (
        json.loads(json.dumps(sandbox.token_response(sandbox.find_token(other_token))))[
            "member_id"
        ]
        == other.member_id
    )
