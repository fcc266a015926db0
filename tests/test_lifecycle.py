"""The app's lifecycle as the portal drives it: install in either order, repeats, uninstall."""

import pytest
from sqlalchemy import select

from b24app import eventlog, store
from b24app.bitrix import rest_client
from b24app.db import reading
from b24app.models import EventLogEntry, InstallState
from tests.conftest import frame_post, stored
from tests.test_events import (
    bind_lifecycle_events,
    install_with_handlers,
    open_install_page,
    post_event,
    store_ids,
)


def log_rows(server, member_id):
    """Return ``(kind, outcome, message)`` of the portal's event log rows, oldest first."""
    with server.app.app_context():
        eventlog.flush()
        with reading() as session:
            rows = session.execute(
                select(EventLogEntry.kind, EventLogEntry.outcome, EventLogEntry.message)
                .where(EventLogEntry.member_id == member_id)
                .order_by(EventLogEntry.id)
            )
            return [tuple(row) for row in rows]


def calls_work(server, member_id):
    """Say whether the app can call the portal with the tokens it stored."""
    with server.app.app_context():
        return "result" in rest_client().call(member_id, "server.time")


def assert_installed(server, portal):
    """Assert the one end state of every install: one installed portal with working tokens."""
    row = stored(server, portal.member_id)
    assert row.install_state == InstallState.INSTALLED
    assert row.application_token == server.sandbox.get_portal(portal.member_id).application_token
    assert store_ids(server) == [portal.member_id]
    assert calls_work(server, portal.member_id)


def test_onappinstall_before_the_install_page_ends_as_the_other_order_does(live_server):
    sandbox = live_server.sandbox
    portal = sandbox.create_portal()
    bind_lifecycle_events(live_server, portal)

    sandbox.finish_install(portal.member_id)
    (delivery,) = sandbox.wait_for_event_deliveries(1)
    assert delivery.status == 200
    assert_installed(live_server, portal)

    launch = sandbox.frame_launch(portal.member_id, install=True)
    assert frame_post(launch).status_code == 200

    assert_installed(live_server, portal)
    assert stored(live_server, portal.member_id).access_token == launch.form["AUTH_ID"]


def test_the_install_page_before_onappinstall_ends_installed(live_server):
    portal = install_with_handlers(live_server)

    assert_installed(live_server, portal)


def test_a_repeated_onappinstall_is_taken_once_and_logged_twice(live_server):
    sandbox = live_server.sandbox
    portal = open_install_page(live_server)
    sandbox.add_fault(portal.member_id, "events", "duplicate", method="ONAPPINSTALL")

    sandbox.finish_install(portal.member_id)
    first, second = sandbox.wait_for_event_deliveries(2)

    assert (first.status, second.status) == (200, 200)
    assert_installed(live_server, portal)
    events = [row for row in log_rows(live_server, portal.member_id) if row[0] == "event"]
    assert (
        events
        == [
            ("event", "received", "ONAPPINSTALL received"),
            ("event", "ok", "ONAPPINSTALL verified"),
        ]
        * 2
    )


def test_a_late_onappinstall_keeps_the_newer_tokens_of_the_app_page(live_server):
    sandbox = live_server.sandbox
    portal = open_install_page(live_server)
    sandbox.add_fault(portal.member_id, "events", "late", delay=1.0)

    sandbox.finish_install(portal.member_id)
    app_page = sandbox.frame_launch(portal.member_id)
    assert frame_post(app_page).status_code == 200
    (delivery,) = sandbox.wait_for_event_deliveries(1)

    assert delivery.status == 200
    assert_installed(live_server, portal)
    row = stored(live_server, portal.member_id)
    assert (row.access_token, row.refresh_token) == (
        app_page.form["AUTH_ID"],
        app_page.form["REFRESH_ID"],
    )


def test_an_uninstall_with_a_wrong_token_from_the_portal_changes_nothing(live_server):
    portal = install_with_handlers(live_server)
    sandbox = live_server.sandbox
    before = stored(live_server, portal.member_id)
    sandbox.add_fault(portal.member_id, "events", "wrong_token", method="ONAPPUNINSTALL")

    sandbox.uninstall(portal.member_id, clean=True)
    delivery = sandbox.wait_for_event_deliveries(2)[1]

    assert delivery.status == 403
    after = stored(live_server, portal.member_id)
    assert after.install_state == InstallState.INSTALLED
    assert (after.access_token, after.refresh_token, after.application_token) == (
        before.access_token,
        before.refresh_token,
        before.application_token,
    )
    assert log_rows(live_server, portal.member_id)[-1] == (
        "event",
        "refused",
        "ONAPPUNINSTALL refused: wrong application_token",
    )


def other_event(member_id, application_token):
    return {
        "event": "ONCRMCONTACTADD",
        "event_handler_id": "7",
        "data": {"FIELDS": {"ID": "134806"}},
        "ts": "1727018926",
        "auth": {"member_id": member_id, "application_token": application_token},
    }


@pytest.mark.parametrize(
    ("token", "member", "status", "error", "reason"),
    [
        ("wrong", None, 403, "The event's application_token does not match.", "wrong"),
        ("", None, 401, "The event carries no auth[application_token].", "no"),
        ("genuine", "f" * 32, 403, "The portal is not known to the app.", "unknown portal"),
    ],
)
def test_any_other_event_without_the_stored_application_token_is_refused(
    live_server, token, member, status, error, reason
):
    portal = install_with_handlers(live_server)
    genuine = stored(live_server, portal.member_id).application_token
    before = stored(live_server, portal.member_id)
    member_id = member or portal.member_id

    response = post_event(
        live_server, other_event(member_id, genuine if token == "genuine" else token)
    )

    assert response.status_code == status
    assert response.json() == {"error": error}
    after = stored(live_server, portal.member_id)
    assert (after.install_state, after.access_token, after.application_token) == (
        before.install_state,
        before.access_token,
        before.application_token,
    )
    kind, outcome, message = log_rows(live_server, member_id)[-1]
    assert (kind, outcome) == ("event", "refused")
    assert message.startswith(f"ONCRMCONTACTADD refused: {reason}")


def test_any_other_event_with_the_stored_application_token_is_taken(live_server):
    portal = install_with_handlers(live_server)
    genuine = stored(live_server, portal.member_id).application_token

    response = post_event(live_server, other_event(portal.member_id, genuine))

    assert response.status_code == 200
    assert response.json() == {"result": "ok"}
    assert log_rows(live_server, portal.member_id)[-2:] == [
        ("event", "received", "ONCRMCONTACTADD received"),
        ("event", "ok", "ONCRMCONTACTADD verified; needs no action"),
    ]


def test_a_clean_uninstall_deletes_everything_but_the_record_of_it(live_server):
    portal = install_with_handlers(live_server)
    sandbox = live_server.sandbox
    assert len(log_rows(live_server, portal.member_id)) > 3

    sandbox.uninstall(portal.member_id, clean=True)
    delivery = sandbox.wait_for_event_deliveries(2)[1]

    assert (delivery.event, delivery.status) == ("ONAPPUNINSTALL", 200)
    assert stored(live_server, portal.member_id) is None
    assert store_ids(live_server) == []
    ((kind, outcome, message),) = log_rows(live_server, portal.member_id)
    assert (kind, outcome) == ("uninstall", "ok")
    assert message.startswith("Uninstalled; tokens and data deleted (")


def test_installing_again_after_a_clean_uninstall_starts_from_scratch(live_server):
    portal = install_with_handlers(live_server)
    sandbox = live_server.sandbox
    with live_server.app.app_context():
        store.next_ping_sequence(portal.member_id)
    sandbox.uninstall(portal.member_id, clean=True)
    sandbox.wait_for_event_deliveries(2)

    assert frame_post(sandbox.frame_launch(portal.member_id)).status_code == 200
    assert stored(live_server, portal.member_id).install_state == InstallState.PENDING
    bind_lifecycle_events(live_server, portal)
    sandbox.finish_install(portal.member_id)
    delivery = sandbox.wait_for_event_deliveries(3)[2]

    assert (delivery.event, delivery.status) == ("ONAPPINSTALL", 200)
    assert_installed(live_server, portal)
    assert stored(live_server, portal.member_id).ping_sequence == 0


def test_a_reinstall_whose_uninstall_was_lost_takes_the_new_application_token(live_server):
    portal = install_with_handlers(live_server)
    sandbox = live_server.sandbox
    old_token = stored(live_server, portal.member_id).application_token
    sandbox.add_fault(portal.member_id, "events", "lost", method="ONAPPUNINSTALL")
    sandbox.uninstall(portal.member_id)
    sandbox.wait_for_event_deliveries(2)
    assert stored(live_server, portal.member_id).application_token == old_token

    assert frame_post(sandbox.frame_launch(portal.member_id)).status_code == 200
    bind_lifecycle_events(live_server, portal)
    sandbox.finish_install(portal.member_id)
    delivery = sandbox.wait_for_event_deliveries(3)[2]

    assert (delivery.event, delivery.status) == ("ONAPPINSTALL", 200)
    assert_installed(live_server, portal)
    assert stored(live_server, portal.member_id).application_token != old_token


def test_an_api_only_app_installs_uninstalls_and_installs_again_without_a_browser(live_server):
    sandbox = live_server.sandbox
    portal = sandbox.create_portal()
    handler = live_server.public_url + "/events"

    sandbox.install_api_only(portal.member_id)
    (installed,) = sandbox.wait_for_event_deliveries(1)

    assert (installed.url, installed.status) == (live_server.public_url + "/install", 200)
    assert_installed(live_server, portal)
    bound = [(h.event, h.handler) for h in sandbox.bound_events(portal.member_id)]
    assert ("ONAPPUNINSTALL", handler) in bound
    assert log_rows(live_server, portal.member_id)[-1] == (
        "install_finish",
        "ok",
        "Install finished (API-only app)",
    )

    sandbox.uninstall(portal.member_id)
    uninstalled = sandbox.wait_for_event_deliveries(2)[1]
    assert (uninstalled.event, uninstalled.url, uninstalled.status) == (
        "ONAPPUNINSTALL",
        handler,
        200,
    )
    assert stored(live_server, portal.member_id).install_state == InstallState.UNINSTALLED
    assert store_ids(live_server) == []

    sandbox.install_api_only(portal.member_id)
    again = sandbox.wait_for_event_deliveries(3)[2]
    assert again.status == 200
    assert_installed(live_server, portal)
    assert ("ONAPPUNINSTALL", handler) in [
        (h.event, h.handler) for h in sandbox.bound_events(portal.member_id)
    ]


def test_a_repeated_api_only_install_finds_its_handler_bound_already(live_server):
    sandbox = live_server.sandbox
    portal = sandbox.create_portal()
    sandbox.add_fault(portal.member_id, "events", "duplicate", method="ONAPPINSTALL")

    sandbox.install_api_only(portal.member_id)
    first, second = sandbox.wait_for_event_deliveries(2)

    assert (first.status, second.status) == (200, 200)
    assert_installed(live_server, portal)
    handlers = [h.event for h in sandbox.bound_events(portal.member_id)]
    assert handlers.count("ONAPPUNINSTALL") == 1


def test_the_app_page_warns_an_admin_while_the_install_is_unfinished(live_server):
    sandbox = live_server.sandbox
    portal = sandbox.create_portal()

    unfinished = frame_post(sandbox.frame_launch(portal.member_id, install=False))
    sandbox.finish_install(portal.member_id)
    finished = frame_post(sandbox.frame_launch(portal.member_id, install=False))
    other_user = frame_post(sandbox.frame_launch(portal.member_id, user_id=2))

    assert unfinished.status_code == 200
    assert 'id="install-warning"' in unfinished.text
    assert "The install is not finished" in unfinished.text
    assert finished.status_code == other_user.status_code == 200
    assert 'id="install-warning"' not in finished.text
    assert 'id="install-warning"' not in other_user.text
