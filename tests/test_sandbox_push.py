"""The sandbox's push server over a real WebSocket, fed by pull.application.event.add."""

import json
import time

import pytest
import requests
from simple_websocket import Client, ConnectionClosed


@pytest.fixture
def portal(live_server):
    portal = live_server.sandbox.create_portal()
    live_server.sandbox.finish_install(portal.member_id)
    return portal


def rest(server, method, auth, **params):
    return requests.post(
        f"{server.sandbox_url}/rest/{method}", json={"auth": auth, **params}, timeout=10
    )


def connect(server, auth):
    """Open a push socket the way the JS SDK does, with the user's pull config."""
    config = rest(server, "pull.application.config.get", auth).json()["result"]
    channels = config["channels"]
    url = (
        f"{config['server']['websocket']}?CHANNEL_ID={channels['private']['id']}"
        f"%2F{channels['shared']['id']}&jsonRpc=true&revision=19"
    )
    return Client.connect(url)


def receive_message(ws):
    frame = ws.receive(timeout=5)
    assert frame is not None, "no push message arrived"
    return json.loads(frame)


def drain(ws):
    """Read and drop whatever the socket has received so far."""
    while ws.receive(timeout=0.3) is not None:
        pass


def wait_for_listeners(server, member_id, auth, expected):
    """Push probes until ``expected`` sockets are registered, so a test does not race them."""
    for _ in range(50):
        rest(server, "pull.application.event.add", auth, COMMAND="probe")
        if server.sandbox.pushed_messages[-1].delivered_to == expected:
            return
    raise AssertionError("sockets never subscribed")


def test_shared_channel_message_reaches_every_user(live_server, portal):
    sandbox = live_server.sandbox
    admin = sandbox.frame_launch(portal.member_id, user_id=1).form["AUTH_ID"]
    user = sandbox.frame_launch(portal.member_id, user_id=2).form["AUTH_ID"]
    admin_ws, user_ws = connect(live_server, admin), connect(live_server, user)
    wait_for_listeners(live_server, portal.member_id, admin, 2)
    for ws in (admin_ws, user_ws):
        drain(ws)
    sandbox.pushed_messages.clear()

    response = rest(
        live_server, "pull.application.event.add", user, COMMAND="hello", PARAMS={"a": 1}
    )
    first = receive_message(admin_ws)
    second = receive_message(user_ws)

    assert response.json()["result"] is True
    for message in (first, second):
        assert message["jsonrpc"] == "2.0"
        assert message["method"] == "incoming.message"
        assert message["params"]["sender"] == {"type": 2}
        body = message["params"]["body"]
        assert body["module_id"] == "application"
        assert body["command"] == "hello"
        assert body["params"] == {"a": 1}
        assert body["extra"]["server_name"] == f"localhost:{live_server.port}"
        assert body["extra"]["revision_web"] == 19
        assert body["extra"]["revision_mobile"] == 3
        assert isinstance(body["extra"]["server_time_unix"], float)
    [record] = sandbox.pushed_messages
    assert record.delivered_to == 2
    assert record.channel_type == "shared"
    assert first["params"]["mid"] == record.mid
    admin_ws.close()
    user_ws.close()


def test_user_id_message_reaches_only_that_user_with_unique_mids(live_server, portal):
    sandbox = live_server.sandbox
    admin = sandbox.frame_launch(portal.member_id, user_id=1).form["AUTH_ID"]
    user = sandbox.frame_launch(portal.member_id, user_id=2).form["AUTH_ID"]
    admin_ws, user_ws = connect(live_server, admin), connect(live_server, user)
    wait_for_listeners(live_server, portal.member_id, admin, 2)
    while user_ws.receive(timeout=0.3) is not None:
        pass
    while admin_ws.receive(timeout=0.3) is not None:
        pass

    for number in range(3):
        rest(
            live_server,
            "pull.application.event.add",
            admin,
            COMMAND="tick",
            PARAMS={"n": number},
            USER_ID=[2],
            MODULE_ID="main",
        )
    received = [receive_message(user_ws) for _ in range(3)]

    assert [m["params"]["body"]["params"]["n"] for m in received] == [0, 1, 2]
    assert len({m["params"]["mid"] for m in received}) == 3
    assert {m["params"]["body"]["module_id"] for m in received} == {"main"}
    assert admin_ws.receive(timeout=0.5) is None
    ticks = [m for m in sandbox.pushed_messages if m.command == "tick"]
    assert [m.delivered_to for m in ticks] == [1, 1, 1]
    assert {m.channel for m in ticks} == {sandbox.private_channel(portal.member_id, 2).id}
    admin_ws.close()
    user_ws.close()


def test_socket_ignores_acknowledgements_and_stays_open(live_server, portal):
    auth = live_server.sandbox.frame_launch(portal.member_id).form["AUTH_ID"]
    ws = connect(live_server, auth)
    wait_for_listeners(live_server, portal.member_id, auth, 1)

    ws.send("mack:whatever")
    ws.send("pong")
    rest(live_server, "pull.application.event.add", auth, COMMAND="after")

    commands = []
    while (frame := ws.receive(timeout=2)) is not None:
        commands.append(json.loads(frame)["params"]["body"]["command"])
        if commands[-1] == "after":
            break
    assert commands[-1] == "after"
    assert ws.connected
    ws.close()


def test_other_portals_sockets_get_nothing(live_server, portal):
    sandbox = live_server.sandbox
    other = sandbox.create_portal()
    mine = sandbox.frame_launch(portal.member_id).form["AUTH_ID"]
    theirs = sandbox.frame_launch(other.member_id).form["AUTH_ID"]
    their_ws = connect(live_server, theirs)
    wait_for_listeners(live_server, other.member_id, theirs, 1)
    while their_ws.receive(timeout=0.3) is not None:
        pass

    rest(live_server, "pull.application.event.add", mine, COMMAND="private")

    assert their_ws.receive(timeout=0.5) is None
    assert sandbox.pushed_messages[-1].delivered_to == 0
    their_ws.close()


@pytest.mark.parametrize("query", ["CHANNEL_ID=unknown", "", "CHANNEL_ID=%2F"])
def test_unknown_channel_is_closed_with_4010(live_server, query):
    ws = Client.connect(f"ws://localhost:{live_server.port}/subws/?{query}")

    with pytest.raises(ConnectionClosed) as closed:
        ws.receive(timeout=5)

    assert closed.value.reason == 4010


def test_request_log_hides_the_private_channel_id(live_server, portal, caplog):
    caplog.set_level("INFO", logger="werkzeug")
    auth = live_server.sandbox.frame_launch(portal.member_id).form["AUTH_ID"]
    config = rest(live_server, "pull.application.config.get", auth).json()["result"]
    ws = connect(live_server, auth)
    wait_for_listeners(live_server, portal.member_id, auth, 1)
    ws.close()
    # The server logs a socket's request line once the socket has closed.
    deadline = time.monotonic() + 5
    while "/subws/" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)

    assert "/subws/?CHANNEL_ID=[hidden]" in caplog.text
    assert config["channels"]["private"]["id"] not in caplog.text
