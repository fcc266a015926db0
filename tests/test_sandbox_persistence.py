"""The sandbox's state file: what a portal remembers survives a restart of the dev server."""

import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from b24app.bitrix import rest_client
from b24app.scheduler import send_ping
from tests.conftest import build_app, install_portal


def state_file(app):
    return app.config["SANDBOX_STATE_FILE"]


def read_state(app):
    with open(state_file(app), encoding="utf-8") as file:
        return json.load(file)


def restart(tmp_path):
    """Build a second app on the same instance folder and database, as a restart does."""
    return build_app(tmp_path).extensions["sandbox"]


def refresh(app, refresh_token):
    return app.test_client().get(
        "/oauth-server/oauth/token/",
        query_string={
            "grant_type": "refresh_token",
            "client_id": app.config["B24_CLIENT_ID"],
            "client_secret": app.config["B24_CLIENT_SECRET"],
            "refresh_token": refresh_token,
        },
        base_url=app.config["SANDBOX_URL"],
    )


def server_time(app, access_token):
    return app.test_client().post(
        "/rest/server.time", json={"auth": access_token}, base_url=app.config["SANDBOX_URL"]
    )


def test_the_state_file_is_in_the_instance_folder_by_default(app, tmp_path):
    assert state_file(app) == str(tmp_path / "instance" / "sandbox-state.json")


def test_the_state_file_setting_is_read_from_the_environment(monkeypatch, tmp_path):
    path = tmp_path / "elsewhere" / "portals.json"
    monkeypatch.setenv("SANDBOX_STATE_FILE", str(path))
    app = build_app(tmp_path)

    app.extensions["sandbox"].create_portal()

    assert state_file(app) == str(path)
    assert path.exists()
    assert not (tmp_path / "instance" / "sandbox-state.json").exists()


def test_a_missing_file_means_a_fresh_sandbox_and_nothing_is_written_until_a_change(app):
    assert app.extensions["sandbox"].portals == []
    assert not os.path.exists(state_file(app))


def test_creating_and_installing_a_portal_writes_the_state_file(app, sandbox):
    portal = sandbox.create_portal()

    stored = read_state(app)
    assert [p["member_id"] for p in stored["portals"]] == [portal.member_id]
    assert stored["portals"][0]["installed"] is False

    sandbox.finish_install(portal.member_id)

    stored = read_state(app)
    assert stored["portals"][0]["installed"] is True
    assert stored["portals"][0]["install_count"] == 1
    assert stored["portals"][0]["application_token"] == portal.application_token


def test_the_state_file_is_private_and_no_temporary_file_is_left(app, sandbox):
    sandbox.create_portal()

    assert os.stat(state_file(app)).st_mode & 0o077 == 0
    folder = os.path.dirname(state_file(app))
    assert [name for name in os.listdir(folder) if "state" in name] == ["sandbox-state.json"]


def test_a_restarted_sandbox_has_the_same_portals_users_and_handlers(tmp_path, sandbox):
    first = sandbox.create_portal()
    sandbox.finish_install(first.member_id)
    sandbox.bind_event(first.member_id, "ONAPPUNINSTALL", "http://127.0.0.1:9/events", 0, 1)
    second = sandbox.create_portal()
    third = sandbox.create_portal()
    sandbox.install_api_only(third.member_id)

    restarted = restart(tmp_path)

    assert restarted is not sandbox
    assert [p.member_id for p in restarted.portals] == [
        first.member_id,
        second.member_id,
        third.member_id,
    ]
    portal = restarted.get_portal(first.member_id)
    assert portal.app_state == "installed"
    assert portal.app_id == first.app_id
    assert portal.application_token == first.application_token
    assert portal.users == first.users
    assert restarted.get_user(first.member_id, 1).admin is True
    assert restarted.bound_events(first.member_id) == sandbox.bound_events(first.member_id)
    assert restarted.get_portal(second.member_id).app_state == "not_installed"
    assert restarted.get_portal(third.member_id).app_state == "api_only"


def test_id_counters_continue_after_a_restart(tmp_path, sandbox):
    portal = sandbox.create_portal()
    bound = sandbox.bind_event(portal.member_id, "ONAPPINSTALL", "http://127.0.0.1:9/e", 0, 1)

    restarted = restart(tmp_path)
    another = restarted.create_portal()
    bound_again = restarted.bind_event(
        another.member_id, "ONAPPINSTALL", "http://127.0.0.1:9/e", 0, 1
    )

    assert another.app_id == portal.app_id + 1
    assert bound_again.id == bound.id + 1


def test_a_token_issued_before_a_restart_still_authenticates(tmp_path, sandbox):
    portal = sandbox.create_portal()
    sandbox.finish_install(portal.member_id)
    access_token = sandbox.frame_launch(portal.member_id).form["AUTH_ID"]

    response = server_time(build_app(tmp_path), access_token)

    assert response.status_code == 200, response.json
    assert "result" in response.json


def test_an_expired_access_token_stays_expired_after_a_restart(tmp_path, sandbox):
    portal = sandbox.create_portal()
    sandbox.finish_install(portal.member_id)
    access_token = sandbox.frame_launch(portal.member_id).form["AUTH_ID"]
    sandbox.expire_access_tokens(portal.member_id)

    response = server_time(build_app(tmp_path), access_token)

    assert response.status_code == 401
    assert response.json["error"] == "expired_token"


def test_a_refresh_token_from_before_a_restart_refreshes_exactly_once(tmp_path, sandbox):
    portal = sandbox.create_portal()
    sandbox.finish_install(portal.member_id)
    launch = sandbox.frame_launch(portal.member_id)
    app = build_app(tmp_path)

    first = refresh(app, launch.form["REFRESH_ID"])
    again = refresh(app, launch.form["REFRESH_ID"])
    after_another_restart = refresh(build_app(tmp_path), launch.form["REFRESH_ID"])

    assert first.status_code == 200, first.json
    assert first.json["member_id"] == portal.member_id
    assert again.status_code == 400
    assert again.json["error"] == "invalid_grant"
    assert after_another_restart.status_code == 400
    assert after_another_restart.json["error"] == "invalid_grant"
    # The access token issued with the used refresh token went out of service with it.
    assert server_time(build_app(tmp_path), launch.form["AUTH_ID"]).status_code == 401
    assert server_time(build_app(tmp_path), first.json["access_token"]).status_code == 200


def test_an_uninstall_persists_with_its_revoked_tokens(tmp_path, sandbox):
    portal = sandbox.create_portal()
    sandbox.finish_install(portal.member_id)
    launch = sandbox.frame_launch(portal.member_id)
    sandbox.bind_event(portal.member_id, "ONAPPUNINSTALL", "http://127.0.0.1:9/events", 0, 1)
    sandbox.uninstall(portal.member_id)
    app = build_app(tmp_path)
    restarted = app.extensions["sandbox"]

    restored = restarted.get_portal(portal.member_id)
    assert restored.app_state == "uninstalled"
    assert restored.application_token == portal.application_token
    assert restored.handlers == []
    assert restarted.find_token(launch.form["AUTH_ID"]) is None
    response = refresh(app, launch.form["REFRESH_ID"])
    assert response.status_code == 401
    assert response.json["error"] == "NOT_INSTALLED"


def test_push_channel_ids_survive_a_restart(tmp_path, sandbox):
    portal = sandbox.create_portal()
    shared = sandbox.shared_channel(portal.member_id)
    private = sandbox.private_channel(portal.member_id, 2)

    restarted = restart(tmp_path)

    assert restarted.shared_channel(portal.member_id) == shared
    assert restarted.private_channel(portal.member_id, 2) == private
    assert restarted.subscribe([shared.id, private.id]).member_id == portal.member_id


def test_records_for_tests_and_frame_launches_start_empty_after_a_restart(tmp_path, sandbox):
    portal = sandbox.create_portal()
    sandbox.finish_install(portal.member_id)
    launch = sandbox.frame_launch(portal.member_id)
    sandbox.push(portal.member_id, [], "main", "ping", {})

    restarted = restart(tmp_path)

    assert not restarted.pushed_messages
    assert restarted.refresh_counts == {}
    assert restarted.find_launch(launch.app_sid) is None


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('{"version": 1, "portals": [', "Expecting"),
        ("[]", "unexpected content (AttributeError)"),
        ('{"version": 99}', "unexpected content (ValueError)"),
        (
            '{"version": 1, "next_app_id": 2, "next_handler_id": 1, "portals": [], '
            '"channels": [], "tokens": [{"access_token": "a1b2c3d4e5f6"}]}',
            "unexpected content (KeyError)",
        ),
        (
            '{"version": 1, "next_app_id": 2, "next_handler_id": 1, "portals": [], '
            '"channels": [], "tokens": [{"access_token": "a1b2c3d4e5f6", '
            '"refresh_token": "r", "member_id": "m", "user_id": "a1b2c3d4e5f6", '
            '"access_expires": 1, "refresh_expires": 1, "revoked": false, '
            '"uninstalled": false}]}',
            "unexpected content (ValueError)",
        ),
    ],
)
def test_a_corrupt_file_is_kept_aside_with_a_warning_and_the_sandbox_starts_empty(
    tmp_path, caplog, content, reason
):
    instance = tmp_path / "instance"
    instance.mkdir()
    (instance / "sandbox-state.json").write_text(content)
    caplog.set_level(logging.INFO)

    app = build_app(tmp_path)

    assert app.extensions["sandbox"].portals == []
    kept = [name for name in os.listdir(instance) if name.startswith("sandbox-state.json.")]
    assert len(kept) == 1
    assert kept[0].startswith("sandbox-state.json.corrupt-")
    assert (instance / kept[0]).read_text() == content
    assert not (instance / "sandbox-state.json").exists()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert f"Sandbox state file {instance / 'sandbox-state.json'} is unreadable" in message
    assert reason in message
    assert f"it was kept as {instance / kept[0]}" in message
    assert message.endswith("the sandbox starts empty")
    assert "a1b2c3d4e5f6" not in caplog.text


def test_a_sandbox_started_after_a_corrupt_file_saves_afresh(tmp_path):
    instance = tmp_path / "instance"
    instance.mkdir()
    (instance / "sandbox-state.json").write_text("not json")
    sandbox = build_app(tmp_path).extensions["sandbox"]

    portal = sandbox.create_portal()

    assert [p.member_id for p in restart(tmp_path).portals] == [portal.member_id]


def test_an_empty_setting_keeps_the_state_in_memory_only(tmp_path):
    app = build_app(tmp_path, {"SANDBOX_STATE_FILE": ""})

    portal = app.extensions["sandbox"].create_portal()
    app.extensions["sandbox"].finish_install(portal.member_id)

    assert [name for name in os.listdir(tmp_path / "instance") if "state" in name] == []
    assert build_app(tmp_path, {"SANDBOX_STATE_FILE": ""}).extensions["sandbox"].portals == []


def test_a_failing_save_is_logged_once_and_the_sandbox_keeps_working(tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    path = blocker / "sandbox-state.json"
    app = build_app(tmp_path, {"SANDBOX_STATE_FILE": str(path)})
    sandbox = app.extensions["sandbox"]

    portal = sandbox.create_portal()
    sandbox.finish_install(portal.member_id)

    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].startswith(f"Sandbox state not saved to {path}, it will be lost at restart")
    assert sandbox.get_portal(portal.member_id).app_state == "installed"


def test_no_token_is_logged_while_saving_and_loading(tmp_path, sandbox, caplog):
    caplog.set_level(logging.DEBUG)
    portal = sandbox.create_portal()
    sandbox.finish_install(portal.member_id)
    launch = sandbox.frame_launch(portal.member_id)

    restart(tmp_path)

    assert "Sandbox state: 1 portal(s) loaded from" in caplog.text
    for secret in (launch.form["AUTH_ID"], launch.form["REFRESH_ID"], portal.application_token):
        assert secret not in caplog.text


def test_an_installed_portal_keeps_working_after_a_server_restart(live_server_factory):
    server = live_server_factory()
    portal = install_portal(server)
    port = server.port
    server.stop()

    # The same port, as `make run` uses: the app stored the portal's client_endpoint with it.
    server = live_server_factory(port=port)

    with server.app.app_context():
        answer = rest_client().call(portal.member_id, "server.time")
        assert isinstance(answer["result"], str)
        server.sandbox.expire_access_tokens(portal.member_id)
        send_ping(portal.member_id, server.app.config["PULL_MODULE_ID"])
    assert server.sandbox.refresh_counts == {portal.member_id: 1}
    assert [m.command for m in server.sandbox.pushed_messages] == ["ping"]
    index = requests.get(server.sandbox_url + "/", timeout=10)
    assert index.status_code == 200
    assert portal.member_id in index.text


def test_tokens_issued_from_many_threads_are_all_saved(tmp_path, sandbox):
    portal = sandbox.create_portal()
    sandbox.finish_install(portal.member_id)
    start = threading.Barrier(8)

    def launch_some(_):
        start.wait()
        return [sandbox.frame_launch(portal.member_id).form["AUTH_ID"] for _ in range(10)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        issued = [token for tokens in pool.map(launch_some, range(8)) for token in tokens]

    restarted = restart(tmp_path)
    assert len(set(issued)) == 80
    assert all(restarted.find_token(token) is not None for token in issued)
