import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import update

from b24app import store
from b24app.bitrix import rest_client
from b24app.bitrix.errors import AccessLost, BitrixError, CallRejected, RetryLater
from b24app.db import transaction
from b24app.models import Portal
from tests.conftest import install_portal, stored


def set_portal(server, member_id, **values):
    with server.app.app_context(), transaction() as session:
        session.execute(update(Portal).where(Portal.member_id == member_id).values(**values))


def call(server, member_id, method, params=None):
    with server.app.app_context():
        return rest_client().call(member_id, method, params)


def tokens(server, member_id):
    with server.app.app_context():
        portal = store.get_portal(member_id)
    return portal.access_token, portal.refresh_token


def test_a_call_returns_the_whole_envelope(live_server):
    portal = install_portal(live_server)

    answer = call(live_server, portal.member_id, "server.time")

    assert isinstance(answer["result"], str)
    assert "start" in answer["time"]


def test_an_expired_token_is_refreshed_once_and_the_call_repeated(live_server):
    portal = install_portal(live_server)
    before = tokens(live_server, portal.member_id)
    live_server.sandbox.expire_access_tokens(portal.member_id)

    answer = call(live_server, portal.member_id, "profile")

    assert answer["result"]["ID"] == "1"
    after = tokens(live_server, portal.member_id)
    assert after[0] != before[0]
    assert after[1] != before[1]
    assert live_server.sandbox.refresh_counts[portal.member_id] == 1


def test_concurrent_calls_with_an_expired_token_refresh_once(live_server):
    portal = install_portal(live_server)
    live_server.sandbox.expire_access_tokens(portal.member_id)
    start = threading.Barrier(8)

    def one_call(_):
        start.wait()
        return call(live_server, portal.member_id, "server.time")

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(one_call, range(8)))

    assert all("result" in answer for answer in answers)
    assert live_server.sandbox.refresh_counts[portal.member_id] == 1


def test_a_refused_refresh_marks_the_portal_and_keeps_the_stored_tokens(live_server):
    portal = install_portal(live_server)
    set_portal(live_server, portal.member_id, refresh_token="not-a-real-refresh-token")
    live_server.sandbox.expire_access_tokens(portal.member_id)
    before = tokens(live_server, portal.member_id)

    with pytest.raises(AccessLost) as error:
        call(live_server, portal.member_id, "server.time")

    assert (error.value.code, error.value.problem) == ("invalid_grant", "needs_reauth")
    assert tokens(live_server, portal.member_id) == before
    assert stored(live_server, portal.member_id).access_problem == "needs_reauth"


def test_a_portal_error_keeps_its_code_and_status(live_server):
    portal = install_portal(live_server)

    with pytest.raises(CallRejected) as error:
        call(live_server, portal.member_id, "no.such.method")

    assert (error.value.code, error.value.status) == ("ERROR_METHOD_NOT_FOUND", 404)
    assert error.value.method == "no.such.method"
    assert error.value.member_id == portal.member_id


def test_an_unknown_portal_has_no_tokens(live_server):
    with pytest.raises(CallRejected) as error:
        call(live_server, "0" * 32, "server.time")
    assert error.value.code == "NO_TOKENS"


def test_an_unreachable_portal_is_a_network_error(live_server):
    portal = install_portal(live_server)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    set_portal(live_server, portal.member_id, client_endpoint=f"http://127.0.0.1:{port}/rest/")

    with pytest.raises(RetryLater) as error:
        call(live_server, portal.member_id, "server.time")

    assert error.value.code == "NETWORK_ERROR"


def test_an_answer_that_is_not_json_is_a_clear_error(live_server):
    portal = install_portal(live_server)
    # The app's own front page answers a POST with an HTML error page.
    set_portal(live_server, portal.member_id, client_endpoint=live_server.public_url + "/")

    with pytest.raises(BitrixError) as error:
        call(live_server, portal.member_id, "")

    assert error.value.code == "BAD_RESPONSE"
    assert error.value.description == "The portal gave an answer that is not JSON (HTTP 405)."


def test_binding_an_event_twice_counts_as_bound_already(live_server):
    portal = install_portal(live_server)
    handler = live_server.public_url + "/events"

    with live_server.app.app_context():
        first = rest_client().bind_event(portal.member_id, "ONAPPUNINSTALL", handler)
        second = rest_client().bind_event(portal.member_id, "ONAPPUNINSTALL", handler)
        with pytest.raises(CallRejected) as refused:
            rest_client().bind_event(portal.member_id, "ONNOSUCHEVENT", handler)

    assert (first, second) == (True, False)
    assert refused.value.code == "ERROR_EVENT_NOT_FOUND"
    bound = live_server.sandbox.bound_events(portal.member_id)
    assert [(h.event, h.handler) for h in bound] == [("ONAPPUNINSTALL", handler)]
