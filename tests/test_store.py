"""The portal store on every supported database: a SQLite file, and PostgreSQL when reachable."""

from datetime import UTC, datetime, timedelta

import pytest

from b24app import create_app, store
from b24app.bitrix.frame import FrameRequest
from b24app.bitrix.oauth import AppInfo, TokenSet
from b24app.models import InstallState
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
    assert store.installed_member_ids() == ["m" * 32]


def test_only_an_administrators_handshake_replaces_stored_tokens(store_app):
    save(make_frame(auth_id="user-access", refresh_id="user-refresh"), replace_tokens=False)
    portal = store.get_portal("m" * 32)
    assert (portal.access_token, portal.refresh_token) == ("user-access", "user-refresh")

    save(make_frame(auth_id="admin-access", refresh_id="admin-refresh"), replace_tokens=True)
    save(make_frame(auth_id="user-access2", refresh_id="poisoned"), replace_tokens=False)

    portal = store.get_portal("m" * 32)
    assert (portal.access_token, portal.refresh_token) == ("admin-access", "admin-refresh")


def test_refreshed_tokens_replace_the_stored_ones(store_app):
    save()
    expires_at = datetime.now(UTC) + timedelta(hours=1)
    store.save_tokens(
        "m" * 32,
        TokenSet("access9", "refresh9", expires_at, "m" * 32, "", "", "pull,crm", "L", 7),
    )
    portal = store.get_portal("m" * 32)
    assert (portal.access_token, portal.refresh_token) == ("access9", "refresh9")
    assert portal.scope == "pull,crm"
    assert abs((portal.expires_at - expires_at).total_seconds()) < 1


def test_an_uninstalled_portal_loses_its_tokens_and_its_pings(store_app):
    save()
    assert store.record_install_event("m" * 32, "apptoken") is True
    store.mark_uninstalled("m" * 32)
    portal = store.get_portal("m" * 32)
    assert portal.install_state == InstallState.UNINSTALLED
    assert (portal.access_token, portal.refresh_token, portal.application_token) == (
        None,
        None,
        None,
    )
    assert store.installed_member_ids() == []


def test_an_install_event_keeps_the_first_application_token(store_app):
    save(info=make_info(installed=False))
    assert store.record_install_event("m" * 32, "first") is True
    assert store.record_install_event("m" * 32, "first") is True
    assert store.record_install_event("m" * 32, "second") is False
    assert store.record_install_event("unknown", "first") is None
    portal = store.get_portal("m" * 32)
    assert (portal.install_state, portal.application_token) == (InstallState.INSTALLED, "first")
    assert store.application_token_matches(portal, "first")
    assert not store.application_token_matches(portal, "second")
    assert not store.application_token_matches(None, "first")


def test_ping_sequence_numbers_are_taken_in_order(store_app):
    save()
    assert [store.next_ping_sequence("m" * 32) for _ in range(3)] == [1, 2, 3]
    assert store.next_ping_sequence("unknown") is None


def test_ticks_are_claimed_once(store_app):
    assert claim_tick("ping", 5) is True
    assert claim_tick("ping", 5) is False
    assert claim_tick("ping", 6) is True
