import time
from datetime import timedelta

import pytest
import requests
from itsdangerous import URLSafeTimedSerializer

from b24app import store
from b24app.api import issue_page_token
from b24app.bitrix.errors import AccessLost
from tests.conftest import install_portal


def status(server, token):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.get(server.public_url + "/api/status", headers=headers, timeout=10)


def test_status_answers_for_the_page_token_portal(live_server):
    portal = install_portal(live_server)
    with live_server.app.app_context():
        token = issue_page_token(portal.member_id, 1)

    response = status(live_server, token)

    assert response.status_code == 200
    assert response.json() == {
        "member_id": portal.member_id,
        "domain": f"localhost:{live_server.port}",
        "install_state": "installed",
        "ping_sequence": 0,
        "last_ping_at": None,
        "access": "working",
        "module_id": "main",
        "ping_interval": 1.0,
    }


def test_status_says_why_the_app_cannot_call_the_portal(live_server):
    portal = install_portal(live_server)
    with live_server.app.app_context():
        token = issue_page_token(portal.member_id, 1)
        until = store.record_backoff(portal.member_id, lambda failures: timedelta(minutes=5))
        assert status(live_server, token).json()["access"] == (
            f"backing off until {until:%H:%M:%S} UTC"
        )
        lost = AccessLost("invalid_grant", "Invalid grant", problem="needs_reauth")
        store.mark_access_problem(
            portal.member_id, lost, store.get_portal(portal.member_id).access_token
        )

    assert status(live_server, token).json()["access"] == (
        "needs re-authorization (invalid_grant: Invalid grant)"
    )


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (None, "A page token is required (Authorization: Bearer …)."),
        ("", "A page token is required (Authorization: Bearer …)."),
        ("forged.token.value", "The page token is not valid; reopen the app."),
    ],
)
def test_status_refuses_a_missing_or_forged_token(live_server, token, message):
    response = status(live_server, token)
    assert response.status_code == 401
    assert response.json() == {"error": message}


def test_status_refuses_a_token_signed_with_another_key(live_server):
    portal = install_portal(live_server)
    forged = URLSafeTimedSerializer("another-key", salt="b24app.page-token").dumps(
        {"member_id": portal.member_id, "user_id": 1}
    )
    response = status(live_server, forged)
    assert response.status_code == 401
    assert response.json() == {"error": "The page token is not valid; reopen the app."}


def test_status_refuses_an_expired_token(live_server_factory):
    server = live_server_factory(env={"PAGE_TOKEN_MAX_AGE": "1"})
    portal = install_portal(server)
    with server.app.app_context():
        token = issue_page_token(portal.member_id, 1)
    time.sleep(2.1)

    response = status(server, token)

    assert response.status_code == 401
    assert response.json() == {"error": "The page token has expired; reopen the app."}


def test_status_of_a_portal_the_app_does_not_know(live_server):
    with live_server.app.app_context():
        token = issue_page_token("0" * 32, 1)
    response = status(live_server, token)
    assert response.status_code == 404
    assert response.json() == {"error": "This portal is not known to the app."}
