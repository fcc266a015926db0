"""The portal store on every supported database: a SQLite file, and PostgreSQL when reachable."""

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from b24app import create_app, store
from b24app.bitrix.errors import AccessLost, RetryLater
from b24app.bitrix.events import parse_event
from b24app.bitrix.frame import FrameRequest
from b24app.bitrix.oauth import AppInfo, TokenSet
from b24app.models import AccessProblem, InstallState
from b24app.scheduler import claim_tick


@pytest.fixture
def store_app(database_url):
    app = create_app({"DATABASE_URL": database_url})
    with app.app_context():
        yield app


def make_frame(member_id="m" * 32, auth_id="access1", refresh_id="refresh1"):
    return FrameRequest(
        domain="portal.bitrix24.com",
        protocol=1,
        lang="en",
        app_sid="sid",
        auth_id=auth_id,
        auth_expires=3600,
        refresh_id=refresh_id,
        member_id=member_id,
        status="L",
        placement="DEFAULT",
        placement_options={},
        server_endpoint="",
        application_token="",
        application_scope="pull",
    )


def make_info(member_id="m" * 32, installed=True):
    return AppInfo(
        client_id="local.app",
        member_id=member_id,
        domain="portal.bitrix24.com",
        client_endpoint="https://portal.bitrix24.com/rest/",
        installed=installed,
        status="L",
        scope="pull",
        user_id=7,
    )


def install_event(application_token, member_id="m" * 32, **auth):
    """Return a parsed ONAPPINSTALL for the portal, with ``auth`` fields added or replaced."""
    fields = {
        "event": "ONAPPINSTALL",
        "auth[member_id]": member_id,
        "auth[application_token]": application_token,
        "auth[access_token]": "event-access",
        "auth[refresh_token]": "event-refresh",
        "auth[expires_in]": "3600",
    }
    fields.update({f"auth[{key}]": value for key, value in auth.items()})
    return parse_event(fields.items())


def record_install(application_token, member_id="m" * 32, replace=False, **auth):
    return store.record_install_event(
        install_event(application_token, member_id, **auth),
        make_info(member_id),
        "https://oauth.bitrix.info/rest/",
        replace_application_token=replace,
    )


def save(frame=None, info=None, replace_tokens=True):
    return store.save_handshake(
        frame or make_frame(),
        info or make_info(),
        server_endpoint="https://oauth.bitrix.info/rest/",
        install_finished=(info or make_info()).installed,
        replace_tokens=replace_tokens,
    )


def test_a_handshake_creates_then_updates_one_portal(store_app):
    save(info=make_info(installed=False))
    first = store.get_portal("m" * 32)
    assert first.install_state == InstallState.PENDING
    assert first.installed_at is None

    save(make_frame(auth_id="access2", refresh_id="refresh2"))

    portal = store.get_portal("m" * 32)
    assert portal.id == first.id
    assert portal.install_state == InstallState.INSTALLED
    assert portal.installed_at is not None
    assert (portal.access_token, portal.refresh_token) == ("access2", "refresh2")
    assert portal.client_endpoint == "https://portal.bitrix24.com/rest/"
    assert portal.server_endpoint == "https://oauth.bitrix.info/rest/"
    assert portal.user_id == 7
    assert portal.expires_at.tzinfo is not None
    assert store.pingable_portals() == [("m" * 32, None)]


def test_only_an_administrators_handshake_replaces_stored_tokens(store_app):
    save(make_frame(auth_id="user-access", refresh_id="user-refresh"), replace_tokens=False)
    portal = store.get_portal("m" * 32)
    assert (portal.access_token, portal.refresh_token) == ("user-access", "user-refresh")

    save(make_frame(auth_id="admin-access", refresh_id="admin-refresh"), replace_tokens=True)
    save(make_frame(auth_id="user-access2", refresh_id="poisoned"), replace_tokens=False)

    portal = store.get_portal("m" * 32)
    assert (portal.access_token, portal.refresh_token) == ("admin-access", "admin-refresh")


def fresh_tokens():
    expires_at = datetime.now(UTC) + timedelta(hours=1)
    return TokenSet(
        "access9",
        "refresh9",
        expires_at,
        "m" * 32,
        "https://renamed.bitrix24.com/rest/",
        "https://oauth.bitrix.info/rest/",
        "pull,crm",
        "L",
        7,
    )


def test_renewing_refreshes_the_refused_tokens_and_stores_the_new_ones(store_app):
    save()
    asked = []

    def refresh(refresh_token, server_endpoint):
        asked.append((refresh_token, server_endpoint))
        return fresh_tokens()

    assert store.renew_tokens("m" * 32, "access1", refresh).access_token == "access9"

    assert asked == [("refresh1", "https://oauth.bitrix.info/rest/")]
    portal = store.get_portal("m" * 32)
    assert (portal.access_token, portal.refresh_token) == ("access9", "refresh9")
    assert portal.scope == "pull,crm"
    assert portal.client_endpoint == "https://renamed.bitrix24.com/rest/"
    assert portal.domain == "renamed.bitrix24.com"


def test_renewing_tokens_that_changed_meanwhile_takes_the_stored_ones(store_app):
    save()

    def refresh(refresh_token, server_endpoint):
        raise AssertionError("must not refresh")

    assert store.renew_tokens("m" * 32, "an-older-access-token", refresh).access_token == (
        "access1"
    )


def test_a_lost_refresh_marks_the_portal_and_keeps_its_tokens(store_app):
    save()

    def refresh(refresh_token, server_endpoint):
        raise AccessLost("invalid_grant", "Invalid grant", problem=AccessProblem.NEEDS_REAUTH)

    with pytest.raises(AccessLost):
        store.renew_tokens("m" * 32, "access1", refresh)

    portal = store.get_portal("m" * 32)
    assert (portal.access_token, portal.refresh_token) == ("access1", "refresh1")
    assert portal.access_problem == "needs_reauth"
    assert portal.access_problem_detail == "invalid_grant: Invalid grant"
    assert store.pingable_portals() == []
    # Others asking to renew meanwhile are told at once, without a refresh.
    with pytest.raises(AccessLost):
        store.renew_tokens("m" * 32, "access1", refresh)


def test_a_failed_refresh_that_is_not_lost_access_changes_nothing(store_app):
    save()

    def refresh(refresh_token, server_endpoint):
        raise RetryLater("TIMEOUT", "The OAuth server could not be reached (ReadTimeout).")

    with pytest.raises(RetryLater):
        store.renew_tokens("m" * 32, "access1", refresh)

    portal = store.get_portal("m" * 32)
    assert (portal.access_token, portal.refresh_token) == ("access1", "refresh1")
    assert portal.access_problem is None


def test_a_late_failure_never_marks_a_portal_whose_tokens_changed(store_app):
    save()
    lost = AccessLost("NO_AUTH_FOUND", "Wrong authorization data", problem="needs_reauth")

    assert store.mark_access_problem("m" * 32, lost, access_token="an-older-token") is False
    assert store.get_portal("m" * 32).access_problem is None
    assert store.mark_access_problem("m" * 32, lost, access_token="access1") is True
    assert store.get_portal("m" * 32).access_problem == "needs_reauth"


def test_opening_the_app_again_ends_the_access_problem(store_app):
    save()
    lost = AccessLost("PAYMENT_REQUIRED", "", problem=AccessProblem.PAYMENT_REQUIRED)
    store.mark_access_problem("m" * 32, lost, access_token="access1")

    # Anyone's verified frame replaces tokens the portal no longer accepts.
    save(make_frame(auth_id="access2", refresh_id="refresh2"), replace_tokens=False)

    portal = store.get_portal("m" * 32)
    assert (portal.access_token, portal.access_problem, portal.access_problem_at) == (
        "access2",
        None,
        None,
    )
    assert store.pingable_portals() == [("m" * 32, None)]


def test_backoff_grows_with_failures_in_a_row_and_ends_with_a_success(store_app):
    save()
    seen = []

    def delay_after(failures):
        seen.append(failures)
        return timedelta(seconds=10 * failures)

    first = store.record_backoff("m" * 32, delay_after)
    second = store.record_backoff("m" * 32, delay_after)

    assert seen == [1, 2]
    assert timedelta(seconds=9) < second - first < timedelta(seconds=11)
    assert store.pingable_portals() == [("m" * 32, second)]
    store.clear_backoff("m" * 32)
    portal = store.get_portal("m" * 32)
    assert (portal.backoff_failures, portal.backoff_until) == (0, None)


def test_an_uninstalled_portal_loses_its_tokens_and_its_pings(store_app):
    save()
    assert record_install("apptoken") is True
    store.mark_uninstalled("m" * 32)
    portal = store.get_portal("m" * 32)
    assert portal.install_state == InstallState.UNINSTALLED
    assert (portal.access_token, portal.refresh_token, portal.application_token) == (
        None,
        None,
        None,
    )
    assert store.pingable_portals() == []


def test_an_install_event_keeps_the_first_application_token(store_app):
    save(info=make_info(installed=False))
    assert record_install("first") is True
    assert record_install("first") is True
    assert record_install("second") is False
    portal = store.get_portal("m" * 32)
    assert (portal.install_state, portal.application_token) == (InstallState.INSTALLED, "first")
    assert store.application_token_matches(portal, "first")
    assert not store.application_token_matches(portal, "second")
    assert not store.application_token_matches(None, "first")

    assert record_install("second", replace=True) is True
    assert store.get_portal("m" * 32).application_token == "second"


def test_an_install_event_before_any_handshake_creates_the_installed_portal(store_app):
    assert record_install("apptoken", member_id="n" * 32) is True

    portal = store.get_portal("n" * 32)
    assert portal.install_state == InstallState.INSTALLED
    assert (portal.access_token, portal.refresh_token) == ("event-access", "event-refresh")
    assert (portal.domain, portal.client_endpoint, portal.user_id) == (
        "portal.bitrix24.com",
        "https://portal.bitrix24.com/rest/",
        7,
    )
    assert store.pingable_portals() == [("n" * 32, None)]


def test_an_install_event_takes_only_tokens_newer_than_the_stored_ones(store_app):
    now = int(datetime.now(UTC).timestamp())
    save()  # Tokens valid for an hour from now.
    record_install("t", access_token="older", refresh_token="older-r", expires=str(now + 60))
    assert store.get_portal("m" * 32).access_token == "access1"

    record_install("t", access_token="newer", refresh_token="newer-r", expires=str(now + 7200))
    portal = store.get_portal("m" * 32)
    assert (portal.access_token, portal.refresh_token) == ("newer", "newer-r")
    assert portal.expires_at == datetime.fromtimestamp(now + 7200, UTC)

    # A repeated event brings back nothing used up since: the stored tokens are as new.
    record_install("t", access_token="newer", refresh_token="newer-r", expires=str(now + 7200))
    assert store.get_portal("m" * 32).refresh_token == "newer-r"


def test_an_admins_frame_naming_another_application_token_ends_the_old_installation(store_app):
    save()
    assert record_install("old") is True
    reinstalling = dataclasses.replace(make_frame(auth_id="access2"), application_token="new")

    save(reinstalling, info=make_info(installed=False), replace_tokens=False)
    assert store.get_portal("m" * 32).application_token == "old"
    save(
        dataclasses.replace(reinstalling, application_token="old"), info=make_info(installed=False)
    )
    assert store.get_portal("m" * 32).install_state == InstallState.INSTALLED
    save(reinstalling, info=make_info(installed=False))

    portal = store.get_portal("m" * 32)
    assert (portal.install_state, portal.application_token) == (InstallState.PENDING, None)
    assert record_install("new") is True
    portal = store.get_portal("m" * 32)
    assert (portal.install_state, portal.application_token) == (InstallState.INSTALLED, "new")


def test_forgetting_a_portal_deletes_its_row(store_app):
    save()
    assert store.forget_portal("m" * 32) is True
    assert store.get_portal("m" * 32) is None
    assert store.forget_portal("m" * 32) is False


def test_a_ping_is_acknowledged_once_per_user_and_old_acknowledgements_go(store_app):
    save()
    member_id = "m" * 32
    now = datetime.now(UTC)
    hour_ago = now - timedelta(hours=1)

    def acknowledge(sequence, user_id, sent_at=now):
        return store.acknowledge_ping(member_id, sequence, user_id, sent_at, hour_ago)

    assert acknowledge(1, 5, sent_at=now - timedelta(hours=2))
    assert acknowledge(2, 5)
    assert not acknowledge(2, 5)
    assert acknowledge(2, 6)
    assert acknowledge(2, None)
    assert not acknowledge(2, None)
    # Older than the hour, it is forgotten: the page API refuses such a receipt anyway.
    assert acknowledge(1, 5, sent_at=now - timedelta(hours=2))
    assert not store.acknowledge_ping("unknown", 1, 5, now, hour_ago)


def test_forgetting_a_portal_forgets_its_acknowledgements(store_app):
    save()
    member_id = "m" * 32
    now = datetime.now(UTC)
    assert store.acknowledge_ping(member_id, 1, 5, now, now - timedelta(hours=1))

    store.forget_portal(member_id)
    save()

    assert store.acknowledge_ping(member_id, 1, 5, now, now - timedelta(hours=1))


def test_ping_sequence_numbers_are_taken_in_order(store_app):
    save()
    assert [store.next_ping_sequence("m" * 32) for _ in range(3)] == [1, 2, 3]
    assert store.next_ping_sequence("unknown") is None


def test_ticks_are_claimed_once(store_app):
    assert claim_tick("ping", 5) is True
    assert claim_tick("ping", 5) is False
    assert claim_tick("ping", 6) is True
