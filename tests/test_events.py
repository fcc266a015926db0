import requests

from b24app import store
from b24app.bitrix.forms import encode
from b24app.models import InstallState
from tests.conftest import frame_post, stored


def bind_lifecycle_events(server, portal):
    """Bind ONAPPINSTALL and ONAPPUNINSTALL to the app's handler, as its install page does."""
    for event in ("ONAPPINSTALL", "ONAPPUNINSTALL"):
        server.sandbox.bind_event(portal.member_id, event, server.public_url + "/events", 0, 1)


def open_install_page(server):
    """Create a sandbox portal and make its install handshake, with the handlers bound."""
    portal = server.sandbox.create_portal()
    assert frame_post(server.sandbox.frame_launch(portal.member_id)).status_code == 200
    bind_lifecycle_events(server, portal)
    return portal


def install_with_handlers(server):
    """Install the app on a new sandbox portal with its event handlers bound, as the page does."""
    sandbox = server.sandbox
    portal = open_install_page(server)
    sandbox.finish_install(portal.member_id)
    (delivery,) = sandbox.wait_for_event_deliveries(1)
    assert (delivery.event, delivery.status) == ("ONAPPINSTALL", 200)
    return portal


def post_event(server, payload):
    return requests.post(
        server.public_url + "/events",
        data=encode(payload),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=10,
    )


def test_onappinstall_marks_the_portal_installed_and_keeps_its_application_token(live_server):
    portal = install_with_handlers(live_server)

    row = stored(live_server, portal.member_id)
    assert row.install_state == InstallState.INSTALLED
    assert (
        row.application_token == live_server.sandbox.get_portal(portal.member_id).application_token
    )
    assert store_ids(live_server) == [portal.member_id]


def uninstall_event(member_id, application_token, clean="0"):
    """Return an ONAPPUNINSTALL body as a portal posts it (it carries no access token)."""
    return {
        "event": "ONAPPUNINSTALL",
        "data": {"CLEAN": clean},
        "auth": {"member_id": member_id, "application_token": application_token},
    }


def store_ids(server):
    with server.app.app_context():
        return [member_id for member_id, _ in store.pingable_portals()]


def test_onappinstall_with_a_token_the_oauth_server_rejects_changes_nothing(live_server):
    sandbox = live_server.sandbox
    portal = sandbox.create_portal()
    frame_post(sandbox.frame_launch(portal.member_id))

    response = post_event(
        live_server,
        {
            "event": "ONAPPINSTALL",
            "auth": {
                "member_id": portal.member_id,
                "access_token": "forged-token",
                "application_token": "attacker-chosen",
            },
        },
    )

    assert response.status_code == 403
    assert response.json() == {
        "error": "The OAuth server rejected the event's token (invalid_token)."
    }
    row = stored(live_server, portal.member_id)
    assert (row.install_state, row.application_token) == (InstallState.PENDING, None)


def test_a_forged_uninstall_changes_nothing(live_server):
    portal = install_with_handlers(live_server)
    before = stored(live_server, portal.member_id)

    for token, status, error in (
        ("wrong-token", 403, "The event's application_token does not match."),
        ("", 401, "The event carries no auth[application_token]."),
    ):
        response = post_event(live_server, uninstall_event(portal.member_id, token, clean="1"))
        assert response.status_code == status
        assert response.json() == {"error": error}

    after = stored(live_server, portal.member_id)
    assert after.install_state == InstallState.INSTALLED
    assert (after.access_token, after.refresh_token) == (before.access_token, before.refresh_token)


def test_a_genuine_uninstall_deletes_the_tokens_and_stops_the_pings(live_server):
    portal = install_with_handlers(live_server)

    live_server.sandbox.uninstall(portal.member_id)
    deliveries = live_server.sandbox.wait_for_event_deliveries(2)

    assert (deliveries[1].event, deliveries[1].status) == ("ONAPPUNINSTALL", 200)
    row = stored(live_server, portal.member_id)
    assert row.install_state == InstallState.UNINSTALLED
    assert (row.access_token, row.refresh_token, row.application_token) == (None, None, None)
    assert store_ids(live_server) == []


def test_a_malformed_event_is_refused(live_server):
    response = requests.post(
        live_server.public_url + "/events", data={"auth]": "x", "event": "ONAPPTEST"}, timeout=10
    )
    assert response.status_code == 400
    assert response.json() == {"error": "Malformed field name 'auth]'."}

    response = post_event(live_server, {"event": "ONAPPTEST"})
    assert response.status_code == 400
    assert response.json() == {"error": "An event needs event and auth[member_id]."}


def install_event(portal, launch, application_token):
    return {
        "event": "ONAPPINSTALL",
        "auth": {
            "member_id": portal.member_id,
            "access_token": launch.form["AUTH_ID"],
            "application_token": application_token,
        },
    }


def test_onappinstall_with_a_non_admin_token_is_refused(live_server):
    sandbox = live_server.sandbox
    portal = sandbox.create_portal()
    frame_post(sandbox.frame_launch(portal.member_id))
    sandbox.finish_install(portal.member_id)
    user_launch = sandbox.frame_launch(portal.member_id, user_id=2)

    response = post_event(live_server, install_event(portal, user_launch, "chosen-by-user"))

    assert response.status_code == 403
    assert response.json() == {"error": "ONAPPINSTALL must carry an administrator's token."}
    assert stored(live_server, portal.member_id).application_token is None


def test_a_later_onappinstall_cannot_replace_the_application_token(live_server):
    portal = install_with_handlers(live_server)
    genuine = live_server.sandbox.get_portal(portal.member_id).application_token
    admin_launch = live_server.sandbox.frame_launch(portal.member_id)

    replaced = post_event(live_server, install_event(portal, admin_launch, "another-token"))
    repeated = post_event(live_server, install_event(portal, admin_launch, genuine))

    assert replaced.status_code == 403
    assert replaced.json() == {
        "error": "The portal's application_token is already set; only an uninstall clears it."
    }
    assert repeated.status_code == 200
    assert stored(live_server, portal.member_id).application_token == genuine


def test_reinstalling_after_an_uninstall_takes_the_new_application_token(live_server):
    portal = install_with_handlers(live_server)
    sandbox = live_server.sandbox
    sandbox.uninstall(portal.member_id)
    sandbox.wait_for_event_deliveries(2)

    frame_post(sandbox.frame_launch(portal.member_id))
    sandbox.bind_event(portal.member_id, "ONAPPINSTALL", live_server.public_url + "/events", 0, 1)
    sandbox.finish_install(portal.member_id)
    deliveries = sandbox.wait_for_event_deliveries(3)

    assert (deliveries[2].event, deliveries[2].status) == ("ONAPPINSTALL", 200)
    row = stored(live_server, portal.member_id)
    assert row.install_state == InstallState.INSTALLED
    assert row.application_token == sandbox.get_portal(portal.member_id).application_token


def test_event_fields_that_could_forge_log_lines_are_refused(live_server, caplog):
    response = post_event(
        live_server,
        {
            "event": "ONAPPUNINSTALL",
            "auth": {
                "member_id": "zz\n2026-12-03 INFO b24app.events: forged",
                "application_token": "x",
            },
        },
    )

    assert response.status_code == 400
    assert response.json() == {"error": "The event's name or auth[member_id] is malformed."}
    assert not any("forged" in record.getMessage() for record in caplog.records)


def test_an_oversized_event_is_refused_before_it_is_read(live_server):
    response = requests.post(
        live_server.public_url + "/events",
        data={"event": "ONAPPTEST", "data[X]": "x" * (2 * 1024 * 1024)},
        timeout=30,
    )
    assert response.status_code == 413
    assert response.json() == {"error": "The event is larger than any portal sends."}


def test_an_uninstall_the_portal_does_not_confirm_is_refused(live_server):
    # Every user's frame carries the application_token, so knowing it proves nothing alone.
    portal = install_with_handlers(live_server)
    known_token = live_server.sandbox.frame_launch(portal.member_id, user_id=2).form[
        "APPLICATION_TOKEN"
    ]
    before = stored(live_server, portal.member_id)

    response = post_event(live_server, uninstall_event(portal.member_id, known_token))

    assert response.status_code == 409
    assert response.json() == {"error": "The portal still has the app installed."}
    after = stored(live_server, portal.member_id)
    assert after.install_state == InstallState.INSTALLED
    assert (after.access_token, after.application_token) == (
        before.access_token,
        before.application_token,
    )


def test_an_uninstall_is_taken_even_when_onappinstall_never_arrived(live_server):
    sandbox = live_server.sandbox
    portal = sandbox.create_portal()
    frame_post(sandbox.frame_launch(portal.member_id))
    sandbox.bind_event(
        portal.member_id, "ONAPPUNINSTALL", live_server.public_url + "/events", 0, 1
    )
    sandbox.finish_install(portal.member_id)
    frame_post(sandbox.frame_launch(portal.member_id))
    assert stored(live_server, portal.member_id).application_token is None

    sandbox.uninstall(portal.member_id)
    (delivery,) = sandbox.wait_for_event_deliveries(1)

    assert (delivery.event, delivery.status) == ("ONAPPUNINSTALL", 200)
    assert stored(live_server, portal.member_id).install_state == InstallState.UNINSTALLED
