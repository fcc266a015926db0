"""The portal store: what the app keeps per portal, read and changed only through these steps."""

import hmac
import logging
from datetime import timedelta

from sqlalchemy import select, update

from b24app.db import reading, transaction
from b24app.models import InstallState, Portal, utcnow

log = logging.getLogger(__name__)


def get_portal(member_id):
    """Return the portal with ``member_id``, or None."""
    with reading() as session:
        return session.scalar(select(Portal).where(Portal.member_id == member_id))


def save_handshake(frame, app_info, server_endpoint, install_finished, replace_tokens):
    """Store the portal and the tokens of a verified frame handshake; return the portal.

    :param frame: the verified :class:`~b24app.bitrix.frame.FrameRequest`.
    :param app_info: the OAuth server's :class:`~b24app.bitrix.oauth.AppInfo` for its token.
    :param server_endpoint: the OAuth server's REST endpoint that vouched for the token.
    :param install_finished: whether the portal reports the app as installed.
    :param replace_tokens: whether the frame's tokens replace the stored ones. Only the access
        token of a frame is proven, not its refresh token, so only an administrator's replace
        stored tokens; anyone's fill an empty place.
    """
    now = utcnow()
    with transaction() as session:
        portal = session.scalar(
            select(Portal).where(Portal.member_id == frame.member_id).with_for_update()
        )
        if portal is None:
            portal = Portal(member_id=frame.member_id, ping_sequence=0)
            session.add(portal)
            log.info("New portal %s (%s)", frame.member_id, frame.domain)
        portal.domain = frame.domain
        portal.client_endpoint = app_info.client_endpoint or frame.client_endpoint
        portal.server_endpoint = server_endpoint
        if replace_tokens or not portal.refresh_token:
            portal.access_token = frame.auth_id
            portal.refresh_token = frame.refresh_id
            portal.expires_at = now + timedelta(seconds=frame.auth_expires)
            portal.user_id = app_info.user_id
        portal.scope = app_info.scope or frame.application_scope
        portal.status = app_info.status or frame.status
        if install_finished:
            _mark_installed(portal)
        elif portal.install_state == InstallState.UNINSTALLED:
            portal.install_state = InstallState.PENDING
    return portal


def _mark_installed(portal):
    if portal.install_state != InstallState.INSTALLED:
        portal.installed_at = utcnow()
    portal.install_state = InstallState.INSTALLED


def save_tokens(member_id, tokens):
    """Store a refreshed token pair for ``member_id``."""
    with transaction() as session:
        session.execute(
            update(Portal)
            .where(Portal.member_id == member_id)
            .values(
                access_token=tokens.access_token,
                refresh_token=tokens.refresh_token,
                expires_at=tokens.expires_at,
                scope=tokens.scope or Portal.scope,
            )
        )


def application_token_matches(portal, presented):
    """Return whether ``presented`` is the portal's stored ``application_token``."""
    if portal is None or not portal.application_token:
        return False
    return hmac.compare_digest(portal.application_token.encode(), str(presented).encode())


def record_install_event(member_id, application_token):
    """Record a verified ONAPPINSTALL: the install is finished, ``application_token`` kept.

    :return: True when recorded (again), None for an unknown portal, and False when the portal
        already holds another ``application_token``: that one changes only after an uninstall.
    """
    with transaction() as session:
        portal = session.scalar(
            select(Portal).where(Portal.member_id == member_id).with_for_update()
        )
        if portal is None:
            return None
        if portal.application_token and not application_token_matches(portal, application_token):
            return False
        _mark_installed(portal)
        portal.application_token = application_token
    return True


def mark_uninstalled(member_id):
    """Forget the portal's tokens and stop treating it as installed."""
    with transaction() as session:
        session.execute(
            update(Portal)
            .where(Portal.member_id == member_id)
            .values(
                install_state=InstallState.UNINSTALLED,
                access_token=None,
                refresh_token=None,
                expires_at=None,
                application_token=None,
            )
        )


def installed_member_ids():
    """Return the member ids of every portal that has the app installed and tokens for it."""
    with reading() as session:
        return list(
            session.scalars(
                select(Portal.member_id)
                .where(Portal.install_state == InstallState.INSTALLED)
                .where(Portal.refresh_token.is_not(None))
                .order_by(Portal.id)
            )
        )


def next_ping_sequence(member_id):
    """Take the portal's next ping sequence number, atomically across processes."""
    with transaction() as session:
        return session.scalar(
            update(Portal)
            .where(Portal.member_id == member_id)
            .values(ping_sequence=Portal.ping_sequence + 1)
            .returning(Portal.ping_sequence)
        )


def record_ping_sent(member_id, sent_at):
    """Remember when the last ping to the portal was accepted."""
    with transaction() as session:
        session.execute(
            update(Portal).where(Portal.member_id == member_id).values(last_ping_at=sent_at)
        )
