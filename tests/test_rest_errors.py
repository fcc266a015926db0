"""Every way a portal or the OAuth server fails, through the real client, and what is stored.

The sandbox is told to fail (see ``b24app/sandbox/faults.py``); the client must raise the error
type that says what to do, and the store must end up exactly as that type means: backing off,
marked with an access problem, or unchanged.
"""

import logging

import pytest

from b24app import store
from b24app.bitrix import rest_client
from b24app.bitrix.errors import AccessLost, CallRejected, RetryLater
from b24app.models import utcnow
from b24app.scheduler import start_scheduler
from tests.conftest import frame_post, install_portal, stored
from tests.test_scheduler import pings_to, wait_until


def call(server, member_id, method="profile", attempts=1):
    with server.app.app_context():
        return rest_client().call(member_id, method, attempts=attempts)


def tokens(server, member_id):
    portal = stored(server, member_id)
    return portal.access_token, portal.refresh_token


@pytest.mark.parametrize(
    ("kind", "code", "status"),
    [
        ("QUERY_LIMIT_EXCEEDED", "QUERY_LIMIT_EXCEEDED", 503),
        ("OPERATION_TIME_LIMIT", "OPERATION_TIME_LIMIT", 429),
        ("INTERNAL_SERVER_ERROR", "INTERNAL_SERVER_ERROR", 500),
        ("OVERLOAD_LIMIT", "OVERLOAD_LIMIT", 503),
        ("html_error", "BAD_RESPONSE", 502),
        ("empty_error", "BAD_RESPONSE", 500),
        ("drop_connection", "NETWORK_ERROR", None),
    ],
)
def test_a_portal_that_is_limiting_or_failing_backs_off(live_server, kind, code, status):
    portal = install_portal(live_server)
    before = tokens(live_server, portal.member_id)
    live_server.sandbox.add_fault(portal.member_id, "rest", kind)

    with pytest.raises(RetryLater) as error:
        call(live_server, portal.member_id)

    assert (error.value.code, error.value.status) == (code, status)
    assert (error.value.method, error.value.member_id) == ("profile", portal.member_id)
    after = stored(live_server, portal.member_id)
    assert after.backoff_failures == 1
    assert after.backoff_until > utcnow()
    assert after.access_problem is None
    assert tokens(live_server, portal.member_id) == before


def test_portals_failing_together_back_off_for_jittered_times(live_server):
    # So that they do not all come back at the same moment.
    portals = [install_portal(live_server) for _ in range(6)]
    seconds = []
    for portal in portals:
        live_server.sandbox.add_fault(portal.member_id, "rest", "QUERY_LIMIT_EXCEEDED")
        started = utcnow()
        with pytest.raises(RetryLater):
            call(live_server, portal.member_id)
        until = stored(live_server, portal.member_id).backoff_until
        seconds.append((until - started).total_seconds())

    # A first backoff is 2 s jittered down by up to half; six of them lie apart.
    assert all(0.9 <= second < 2.5 for second in seconds)
    assert max(seconds) - min(seconds) > 0.05


@pytest.mark.parametrize(
    ("kind", "shortest", "longest"),
    [("OPERATION_TIME_LIMIT", 10, 11), ("QUERY_LIMIT_EXCEEDED", 1, 3)],
)
def test_a_method_over_its_time_limit_is_left_alone_for_ten_seconds_at_least(
    live_server, kind, shortest, longest
):
    # A first backoff is otherwise 1 to 2 s (2 s, jittered down to half).
    portal = install_portal(live_server)
    live_server.sandbox.add_fault(portal.member_id, "rest", kind)
    started = utcnow()

    with pytest.raises(RetryLater) as error:
        call(live_server, portal.member_id)

    assert error.value.retry_after == (10 if kind == "OPERATION_TIME_LIMIT" else None)
    backoff = (stored(live_server, portal.member_id).backoff_until - started).total_seconds()
    assert shortest <= backoff < longest


def test_a_portal_that_does_not_answer_in_time_backs_off(live_server_factory):
    server = live_server_factory(env={"REST_TIMEOUT": "0.3"})
    portal = install_portal(server)
    server.sandbox.add_fault(portal.member_id, "rest", "slow", delay=1)

    with pytest.raises(RetryLater) as error:
        call(server, portal.member_id)

    assert error.value.code == "TIMEOUT"
    assert stored(server, portal.member_id).backoff_failures == 1


@pytest.mark.parametrize(
    ("kind", "code", "problem"),
    [
        ("PORTAL_DELETED", "PORTAL_DELETED", "portal_deleted"),
        ("PAYMENT_REQUIRED", "PAYMENT_REQUIRED", "payment_required"),
        ("APPLICATION_NOT_FOUND", "APPLICATION_NOT_FOUND", "not_installed"),
        ("ERROR_OAUTH", "ERROR_OAUTH", "not_installed"),
    ],
)
def test_a_portal_that_shuts_the_app_out_is_marked_and_no_longer_called(
    live_server, kind, code, problem
):
    portal = install_portal(live_server)
    before = tokens(live_server, portal.member_id)
    live_server.sandbox.add_fault(portal.member_id, "rest", kind)

    with pytest.raises(AccessLost) as error:
        call(live_server, portal.member_id)

    assert (error.value.code, error.value.problem) == (code, problem)
    after = stored(live_server, portal.member_id)
    assert after.access_problem == problem
    assert after.access_problem_detail.startswith(f"{code}: ")
    assert tokens(live_server, portal.member_id) == before
    # Not called again: a fault left in place stays unused.
    live_server.sandbox.add_fault(portal.member_id, "rest", "QUERY_LIMIT_EXCEEDED")
    with pytest.raises(AccessLost):
        call(live_server, portal.member_id)
    assert len(live_server.sandbox.faults(portal.member_id)) == 1


def test_a_redirecting_portal_is_asked_again_where_the_oauth_server_says_it_is(live_server):
    portal = install_portal(live_server)
    live_server.sandbox.add_fault(portal.member_id, "rest", "redirect")

    assert call(live_server, portal.member_id)["result"]["ID"] == "1"

    assert live_server.sandbox.refresh_counts[portal.member_id] == 1
    after = stored(live_server, portal.member_id)
    assert after.client_endpoint == live_server.sandbox_url + "/rest/"
    assert after.access_problem is None


def test_a_portal_that_keeps_redirecting_is_marked_moved(live_server):
    portal = install_portal(live_server)
    live_server.sandbox.add_fault(portal.member_id, "rest", "redirect", times=None)

    with pytest.raises(AccessLost) as error:
        call(live_server, portal.member_id)

    assert (error.value.code, error.value.problem) == ("PORTAL_MOVED", "moved")
    assert stored(live_server, portal.member_id).access_problem == "moved"


def test_a_deleted_portal_is_marked_deleted(live_server):
    portal = install_portal(live_server)
    live_server.sandbox.set_portal_condition(portal.member_id, "deleted")

    with pytest.raises(AccessLost):
        call(live_server, portal.member_id)

    assert stored(live_server, portal.member_id).access_problem == "portal_deleted"


def test_a_call_the_portal_cannot_take_is_rejected_and_changes_nothing(live_server):
    portal = install_portal(live_server)
    before = stored(live_server, portal.member_id)

    with pytest.raises(CallRejected) as error:
        call(live_server, portal.member_id, "no.such.method")

    assert (error.value.code, error.value.status) == ("ERROR_METHOD_NOT_FOUND", 404)
    after = stored(live_server, portal.member_id)
    assert (after.access_problem, after.backoff_failures) == (None, 0)
    assert after.access_token == before.access_token


def test_rate_limited_attempts_are_retried_and_a_success_ends_the_backoff(live_server, caplog):
    caplog.set_level(logging.INFO, logger="b24app.bitrix.rest")
    portal = install_portal(live_server)
    live_server.sandbox.add_fault(portal.member_id, "rest", "QUERY_LIMIT_EXCEEDED", times=2)

    answer = call(live_server, portal.member_id, attempts=3)

    assert answer["result"]["ID"] == "1"
    assert live_server.sandbox.faults(portal.member_id) == []
    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) == 2
    assert stored(live_server, portal.member_id).backoff_failures == 0


def test_retries_are_bounded_and_then_the_portal_is_left_alone(live_server):
    portal = install_portal(live_server)
    # Three failures, then the portal would answer: a fourth attempt would succeed.
    live_server.sandbox.add_fault(portal.member_id, "rest", "QUERY_LIMIT_EXCEEDED", times=3)

    with pytest.raises(RetryLater) as error:
        call(live_server, portal.member_id, attempts=3)

    assert error.value.code == "QUERY_LIMIT_EXCEEDED"
    assert live_server.sandbox.faults(portal.member_id) == []
    # While it backs off, the portal is not asked at all.
    live_server.sandbox.add_fault(portal.member_id, "rest", "QUERY_LIMIT_EXCEEDED")
    with pytest.raises(RetryLater) as error:
        call(live_server, portal.member_id)
    assert error.value.code == "BACKING_OFF"
    assert len(live_server.sandbox.faults(portal.member_id)) == 1


def test_an_unknown_token_is_renewed_once_and_the_call_repeated(live_server):
    portal = install_portal(live_server)
    live_server.sandbox.add_fault(portal.member_id, "rest", "NO_AUTH_FOUND")

    assert call(live_server, portal.member_id)["result"]["ID"] == "1"
    assert live_server.sandbox.refresh_counts[portal.member_id] == 1


def test_renewed_tokens_refused_too_mean_the_portal_needs_reauthorization(live_server):
    portal = install_portal(live_server)
    live_server.sandbox.add_fault(portal.member_id, "rest", "NO_AUTH_FOUND", times=2)

    with pytest.raises(AccessLost) as error:
        call(live_server, portal.member_id)

    assert error.value.problem == "needs_reauth"
    after = stored(live_server, portal.member_id)
    assert after.access_problem == "needs_reauth"
    # The renewed tokens are kept: they are the newest the app has.
    assert live_server.sandbox.refresh_counts[portal.member_id] == 1
    assert live_server.sandbox.find_token(after.access_token) is not None


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("invalid_grant", "needs_reauth"),
        ("NO_AUTH_FOUND", "needs_reauth"),
        ("PAYMENT_REQUIRED", "payment_required"),
        ("NOT_INSTALLED", "not_installed"),
        ("PORTAL_DELETED", "portal_deleted"),
    ],
)
def test_a_refresh_the_oauth_server_refuses_marks_the_portal(live_server, kind, problem):
    portal = install_portal(live_server)
    live_server.sandbox.expire_access_tokens(portal.member_id)
    before = tokens(live_server, portal.member_id)
    live_server.sandbox.add_fault(portal.member_id, "oauth", kind)

    with pytest.raises(AccessLost) as error:
        call(live_server, portal.member_id)

    assert (error.value.code, error.value.problem) == (kind, problem)
    assert error.value.method == "oauth/token"
    assert stored(live_server, portal.member_id).access_problem == problem
    assert tokens(live_server, portal.member_id) == before


@pytest.mark.parametrize(
    ("kind", "error_type", "code"),
    [
        ("invalid_client", CallRejected, "invalid_client"),
        ("wrong_client", CallRejected, "wrong_client"),
        ("html_error", RetryLater, "BAD_RESPONSE"),
        ("empty_error", RetryLater, "BAD_RESPONSE"),
        ("drop_connection", RetryLater, "NETWORK_ERROR"),
    ],
)
def test_a_refresh_that_fails_for_other_reasons_keeps_the_portal(
    live_server, kind, error_type, code
):
    portal = install_portal(live_server)
    live_server.sandbox.expire_access_tokens(portal.member_id)
    before = tokens(live_server, portal.member_id)
    live_server.sandbox.add_fault(portal.member_id, "oauth", kind)

    with pytest.raises(error_type) as error:
        call(live_server, portal.member_id)

    assert error.value.code == code
    assert stored(live_server, portal.member_id).access_problem is None
    assert tokens(live_server, portal.member_id) == before
    # Once the OAuth server answers again, the same refresh token still works.
    with live_server.app.app_context():
        store.clear_backoff(portal.member_id)
    assert call(live_server, portal.member_id)["result"]["ID"] == "1"


def test_a_slow_oauth_server_gets_longer_than_a_portal_so_its_refresh_is_not_lost(
    live_server_factory,
):
    server = live_server_factory(env={"REST_TIMEOUT": "0.3", "OAUTH_TIMEOUT": "3"})
    portal = install_portal(server)
    server.sandbox.expire_access_tokens(portal.member_id)
    before = tokens(server, portal.member_id)
    server.sandbox.add_fault(portal.member_id, "oauth", "slow", delay=0.8)

    assert call(server, portal.member_id)["result"]["ID"] == "1"

    after = stored(server, portal.member_id)
    assert after.access_problem is None
    assert (after.access_token, after.refresh_token) != before
    assert server.sandbox.refresh_counts[portal.member_id] == 1


def test_a_refresh_given_up_on_is_reported_and_the_app_opened_again_recovers(
    live_server_factory, caplog
):
    # The OAuth server carries out a refresh the client stopped waiting for, using its
    # refresh token up; the client cannot know, and says so.
    server = live_server_factory(env={"OAUTH_TIMEOUT": "0.3"})
    portal = install_portal(server)
    server.sandbox.expire_access_tokens(portal.member_id)
    server.sandbox.add_fault(portal.member_id, "oauth", "slow", delay=0.8)

    with pytest.raises(RetryLater) as error:
        call(server, portal.member_id)

    assert error.value.code == "TIMEOUT"
    assert (
        f"Portal {portal.member_id}: the OAuth server did not answer a refresh in time"
        in caplog.text
    )
    assert wait_until(lambda: server.sandbox.refresh_counts.get(portal.member_id) == 1)
    with server.app.app_context():
        store.clear_backoff(portal.member_id)
    with pytest.raises(AccessLost):
        call(server, portal.member_id)
    assert stored(server, portal.member_id).access_problem == "needs_reauth"

    assert frame_post(server.sandbox.frame_launch(portal.member_id)).status_code == 200
    assert call(server, portal.member_id)["result"]["ID"] == "1"


def test_a_refresh_rejected_for_our_credentials_backs_the_portal_off(live_server):
    portal = install_portal(live_server)
    sandbox = live_server.sandbox
    sandbox.expire_access_tokens(portal.member_id)
    sandbox.add_fault(portal.member_id, "oauth", "invalid_client", times=None)

    with pytest.raises(CallRejected, match="invalid_client"):
        call(live_server, portal.member_id)
    with pytest.raises(RetryLater) as error:
        call(live_server, portal.member_id)

    assert error.value.code == "BACKING_OFF"
    assert sandbox.refresh_requests[portal.member_id] == 1
    assert stored(live_server, portal.member_id).backoff_failures == 1
    assert stored(live_server, portal.member_id).access_problem is None


def test_a_call_the_portal_rejects_does_not_back_the_portal_off(live_server):
    portal = install_portal(live_server)

    with pytest.raises(CallRejected):
        call(live_server, portal.member_id, method="no.such.method")

    assert stored(live_server, portal.member_id).backoff_failures == 0
    assert call(live_server, portal.member_id)["result"]["ID"] == "1"


def test_opening_the_app_again_restores_a_portal_that_needed_reauthorization(live_server):
    portal = install_portal(live_server)
    live_server.sandbox.expire_access_tokens(portal.member_id)
    live_server.sandbox.add_fault(portal.member_id, "oauth", "invalid_grant")
    with pytest.raises(AccessLost):
        call(live_server, portal.member_id)

    # A user who is no administrator opens the app: the tokens held were dead anyway.
    response = frame_post(live_server.sandbox.frame_launch(portal.member_id, user_id=2))

    assert response.status_code == 200
    assert stored(live_server, portal.member_id).access_problem is None
    assert call(live_server, portal.member_id)["result"]["ID"] == "2"


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("PORTAL_DELETED", "portal_deleted"),
        ("PAYMENT_REQUIRED", "payment_required"),
        ("APPLICATION_NOT_FOUND", "not_installed"),
        ("ERROR_OAUTH", "not_installed"),
        ("redirect", "moved"),
    ],
)
def test_opening_the_app_again_restores_a_portal_that_shut_the_app_out(live_server, kind, problem):
    portal = install_portal(live_server)
    live_server.sandbox.add_fault(portal.member_id, "rest", kind, times=None)
    with pytest.raises(AccessLost):
        call(live_server, portal.member_id)
    assert stored(live_server, portal.member_id).access_problem == problem
    live_server.sandbox.clear_faults(portal.member_id)

    response = frame_post(live_server.sandbox.frame_launch(portal.member_id, user_id=2))

    assert response.status_code == 200
    assert stored(live_server, portal.member_id).access_problem is None
    assert call(live_server, portal.member_id)["result"]["ID"] == "2"


def test_a_portal_in_backoff_is_skipped_while_the_others_keep_their_pings_on_time(
    live_server_factory, caplog
):
    caplog.set_level(logging.INFO, logger="b24app")
    interval = 0.2
    server = live_server_factory(env={"PING_INTERVAL": str(interval), "BACKOFF_MAX": "1"})
    healthy = [install_portal(server), install_portal(server)]
    limited = install_portal(server)
    server.sandbox.add_fault(
        limited.member_id,
        "rest",
        "QUERY_LIMIT_EXCEEDED",
        times=None,
        method="pull.application.event.add",
    )

    scheduler = start_scheduler(server.app)
    try:
        assert wait_until(lambda: all(len(pings_to(server, p.member_id)) >= 15 for p in healthy))
        skipped = [
            r.getMessage()
            for r in caplog.records
            if r.getMessage().startswith(f"Portal {limited.member_id}: backing off, pings skipped")
        ]
        backoffs = [
            r.getMessage()
            for r in caplog.records
            if r.getMessage().startswith(f"Portal {limited.member_id} backs off until")
        ]
        server.sandbox.clear_faults(limited.member_id)
        assert wait_until(lambda: len(pings_to(server, limited.member_id)) >= 2)
    finally:
        scheduler.shutdown()

    for portal in healthy:
        sent = [message.params["sent_at"] for message in pings_to(server, portal.member_id)]
        gaps = [later - earlier for earlier, later in zip(sent, sent[1:], strict=False)]
        assert max(gaps) < 2.5 * interval
    # Each failure backs it off for at least half a second, skipping two ticks or more.
    assert skipped
    assert 1 <= len(backoffs) <= 8
    assert stored(server, limited.member_id).backoff_failures == 0
