"""The sandbox portal's delivery of events, and the faults that make it late, twice or forged."""

import time

import pytest
import requests

from b24app.sandbox.state import SandboxError
from tests.conftest import stored
from tests.test_events import open_install_page


@pytest.fixture
def portal(live_server):
    """Return a sandbox portal whose install page is open, with both lifecycle events bound."""
    return open_install_page(live_server)


def test_an_event_is_posted_once_form_encoded_to_its_handler(live_server, portal):
    sandbox = live_server.sandbox
    sandbox.finish_install(portal.member_id)

    (delivery,) = sandbox.wait_for_event_deliveries(1)
    time.sleep(0.2)  # Time for a second copy, were one coming.

    assert len(sandbox.event_deliveries) == 1
    assert (delivery.event, delivery.status, delivery.fault) == ("ONAPPINSTALL", 200, None)
    assert delivery.url == live_server.public_url + "/events"
    auth = delivery.payload["auth"]
    assert auth["application_token"] == sandbox.get_portal(portal.member_id).application_token
    assert {"access_token", "refresh_token", "expires", "member_id", "user_id"} <= set(auth)


def test_a_duplicate_fault_posts_the_event_twice(live_server, portal):
    sandbox = live_server.sandbox
    sandbox.add_fault(portal.member_id, "events", "duplicate", method="onappinstall")

    sandbox.finish_install(portal.member_id)
    first, second = sandbox.wait_for_event_deliveries(2)

    assert (first.event, second.event) == ("ONAPPINSTALL", "ONAPPINSTALL")
    assert first.payload == second.payload
    assert (first.fault, second.fault) == ("duplicate", "duplicate")
    assert sandbox.faults(portal.member_id) == []


def test_a_late_fault_posts_the_event_after_its_delay(live_server, portal):
    sandbox = live_server.sandbox
    sandbox.add_fault(portal.member_id, "events", "late", delay=0.6)

    started = time.monotonic()
    sandbox.finish_install(portal.member_id)
    assert sandbox.wait_for_event_deliveries(1, timeout=0.3) == []
    (delivery,) = sandbox.wait_for_event_deliveries(1)

    assert time.monotonic() - started >= 0.6
    assert (delivery.status, delivery.fault) == (200, "late")


def test_a_wrong_token_fault_sends_another_application_token(live_server, portal):
    sandbox = live_server.sandbox
    sandbox.finish_install(portal.member_id)
    sandbox.wait_for_event_deliveries(1)
    genuine = sandbox.get_portal(portal.member_id).application_token
    sandbox.add_fault(portal.member_id, "events", "wrong_token", method="ONAPPUNINSTALL")

    sandbox.uninstall(portal.member_id)
    delivery = sandbox.wait_for_event_deliveries(2)[1]

    assert delivery.event == "ONAPPUNINSTALL"
    assert delivery.payload["auth"]["application_token"] not in ("", genuine)
    assert delivery.status == 403


def test_a_lost_fault_posts_nothing(live_server, portal):
    sandbox = live_server.sandbox
    sandbox.add_fault(portal.member_id, "events", "lost")

    sandbox.finish_install(portal.member_id)
    (delivery,) = sandbox.wait_for_event_deliveries(1)

    assert (delivery.status, delivery.fault) == (None, "lost")
    assert delivery.error == "not delivered: lost, as the portal's fault said"
    assert stored(live_server, portal.member_id).application_token is None


def test_an_event_fault_for_another_event_leaves_this_one_alone(live_server, portal):
    sandbox = live_server.sandbox
    sandbox.add_fault(portal.member_id, "events", "lost", method="ONAPPUNINSTALL")

    sandbox.finish_install(portal.member_id)
    (delivery,) = sandbox.wait_for_event_deliveries(1)

    assert (delivery.event, delivery.status, delivery.fault) == ("ONAPPINSTALL", 200, None)
    assert [fault.method for fault in sandbox.faults(portal.member_id)] == ["ONAPPUNINSTALL"]


def test_event_faults_are_arranged_over_http_too(live_server, portal):
    response = requests.post(
        f"{live_server.sandbox_url}/portal/{portal.member_id}/faults",
        json={"target": "events", "kind": "late", "delay": 2, "method": "onAppUninstall"},
        timeout=10,
    )

    assert response.status_code == 201
    assert response.json() == {
        "id": response.json()["id"],
        "member_id": portal.member_id,
        "target": "events",
        "kind": "late",
        "times": 1,
        "method": "ONAPPUNINSTALL",
        "delay": 2.0,
    }


def test_api_only_install_posts_onappinstall_to_the_install_url(live_server):
    sandbox = live_server.sandbox
    portal = sandbox.create_portal()

    sandbox.install_api_only(portal.member_id)
    (delivery,) = sandbox.wait_for_event_deliveries(1)

    assert (delivery.event, delivery.url) == ("ONAPPINSTALL", live_server.public_url + "/install")
    assert sandbox.get_portal(portal.member_id).installed is True
    assert delivery.payload["auth"]["refresh_token"]


def test_only_an_admin_installs_an_api_only_app(live_server):
    sandbox = live_server.sandbox
    portal = sandbox.create_portal()

    with pytest.raises(SandboxError, match="Only an administrator can install the application."):
        sandbox.install_api_only(portal.member_id, user_id=2)

    assert sandbox.bound_events(portal.member_id) == []
    assert sandbox.get_portal(portal.member_id).installed is False


def test_an_installed_app_is_not_installed_again_as_api_only(live_server):
    sandbox = live_server.sandbox
    portal = sandbox.create_portal()
    sandbox.finish_install(portal.member_id)

    with pytest.raises(SandboxError, match="installed already; uninstall it first"):
        sandbox.install_api_only(portal.member_id)

    assert sandbox.get_portal(portal.member_id).app_state == "installed"
    assert sandbox.bound_events(portal.member_id) == []


def test_the_portal_page_installs_an_api_only_app(live_server):
    sandbox = live_server.sandbox
    portal = sandbox.create_portal()
    url = f"{live_server.sandbox_url}/portal/{portal.member_id}/install-api-only"

    refused = requests.post(url, data={"user": "2"}, timeout=10, allow_redirects=False)
    accepted = requests.post(url, data={"user": "1"}, timeout=10, allow_redirects=False)

    assert refused.status_code == 403
    assert accepted.status_code == 302
    assert accepted.headers["Location"].endswith(f"/portal/{portal.member_id}/?user=1")
    assert sandbox.wait_for_event_deliveries(1)[0].status == 200
