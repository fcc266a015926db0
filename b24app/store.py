"""The portal store: what the app keeps per portal, read and changed only through these steps."""

import hmac
import logging
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from b24app.bitrix.errors import AccessLost, CallRejected, RetryLater
from b24app.db import reading, transaction
from b24app.models import InstallState, PingAcknowledgement, Portal, utcnow

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
        # Tokens the portal no longer accepts are as good as none.
        if replace_tokens or not portal.refresh_token or portal.access_problem:
            portal.access_token = frame.auth_id
            portal.refresh_token = frame.refresh_id
            portal.expires_at = now + timedelta(seconds=frame.auth_expires)
            portal.user_id = app_info.user_id
            if portal.access_problem:
                log.info(
                    "Portal %s: access restored (was %s)", frame.member_id, portal.access_problem
                )
            _clear_access_problem(portal)
        portal.scope = app_info.scope or frame.application_scope
        portal.status = app_info.status or frame.status
        if (
            replace_tokens
            and frame.application_token
            and portal.application_token
            and not application_token_matches(portal, frame.application_token)
        ):
            # The portal installed the app anew and the old installation's ONAPPUNINSTALL never
            # reached us: its application_token proves nothing now. The new one is taken from
            # the new installation's ONAPPINSTALL, which proves itself.
            log.warning(
                "Portal %s: the frame names another application_token; the app was installed "
                "again without an uninstall event",
                frame.member_id,
            )
            portal.application_token = None
            if portal.install_state == InstallState.INSTALLED:
                portal.install_state = InstallState.PENDING
        if install_finished:
            _mark_installed(portal)
        elif portal.install_state == InstallState.UNINSTALLED:
            portal.install_state = InstallState.PENDING
    return portal


def _mark_installed(portal):
    if portal.install_state != InstallState.INSTALLED:
        portal.installed_at = utcnow()
    portal.install_state = InstallState.INSTALLED


def _locked_portal(session, member_id):
    """Return the portal's row, locked until the session's transaction ends (see ``db``)."""
    return session.scalar(select(Portal).where(Portal.member_id == member_id).with_for_update())


def renew_tokens(member_id, refused_access_token, refresh):
    """Return the portal with the tokens to use instead of the refused ones (one refresh at most).

    The portal's row stays locked from before the stored tokens are read until the new ones are
    stored, across threads and processes. Whoever finds the stored access token changed since
    theirs was refused takes the stored one; only who finds it unchanged refreshes. A refresh
    that loses access records the portal's access problem in the same locked step, so it can
    never overwrite tokens stored meanwhile.

    :param refresh: ``refresh(refresh_token, server_endpoint)``, returning a
        :class:`~b24app.bitrix.oauth.TokenSet`.
    :raise BitrixError: what ``refresh`` raises; ``CallRejected`` (``NO_TOKENS``) when nothing
        is stored, ``AccessLost`` when the portal already has an access problem.
    """
    with transaction() as session:
        portal = _locked_portal(session, member_id)
        if portal is None or not portal.refresh_token:
            raise CallRejected(
                "NO_TOKENS", "No tokens are stored for the portal.", member_id=member_id
            )
        if portal.access_problem:
            raise AccessLost(
                portal.access_problem,
                portal.access_problem_detail or "",
                problem=portal.access_problem,
                member_id=member_id,
            )
        if portal.access_token != refused_access_token:
            return portal
        try:
            tokens = refresh(portal.refresh_token, portal.server_endpoint)
        except AccessLost as exc:
            exc.member_id = member_id
            _set_access_problem(portal, exc)
            lost = exc
        except RetryLater as exc:
            if exc.code == "TIMEOUT":
                # Nothing tells a refresh never made from one whose answer was lost.
                log.warning(
                    "Portal %s: the OAuth server did not answer a refresh in time; if it made "
                    "it, the stored refresh token is used up and the app must be opened again",
                    member_id,
                )
            raise
        else:
            portal.access_token = tokens.access_token
            portal.refresh_token = tokens.refresh_token
            portal.expires_at = tokens.expires_at
            portal.scope = tokens.scope or portal.scope
            # The OAuth server knows the portal's current address, renamed or not.
            if tokens.client_endpoint and tokens.member_id == member_id:
                _move_portal(portal, tokens.client_endpoint)
            log.info("Portal %s: tokens refreshed", member_id)
            return portal
    log.warning("Portal %s: token refresh refused, %s: %s", member_id, lost.problem, lost.code)
    raise lost


def _move_portal(portal, client_endpoint):
    """Take the portal's current REST address, and with it its domain, from a token answer."""
    if client_endpoint == portal.client_endpoint:
        return
    domain = urlsplit(client_endpoint).netloc
    log.info("Portal %s: now at %s (was %s)", portal.member_id, domain, portal.domain)
    portal.client_endpoint = client_endpoint
    portal.domain = domain or portal.domain


def mark_access_problem(member_id, error, access_token):
    """Record that the portal shut the app out, if ``access_token`` is still the stored one.

    :param error: the :class:`~b24app.bitrix.errors.AccessLost` that says why.
    :return: whether the problem was recorded (a late failure of replaced tokens is not).
    """
    with transaction() as session:
        portal = _locked_portal(session, member_id)
        if portal is None or portal.access_token != access_token or portal.access_problem:
            return False
        _set_access_problem(portal, error)
    log.warning(
        "Portal %s: %s (%s); not called until the app is opened there again",
        member_id,
        error.problem,
        error.code,
    )
    return True


def _set_access_problem(portal, error):
    portal.access_problem = error.problem
    portal.access_problem_detail = f"{error.code}: {error.description}"[:255]
    portal.access_problem_at = utcnow()


def _clear_access_problem(portal):
    portal.access_problem = None
    portal.access_problem_detail = None
    portal.access_problem_at = None


def record_backoff(member_id, delay_after):
    """Count one more failure in a row for the portal and back off; return until when.

    :param delay_after: ``delay_after(failures)``, the backoff (a ``timedelta``) after that many
        failures in a row.
    """
    with transaction() as session:
        portal = _locked_portal(session, member_id)
        if portal is None:
            return utcnow()
        portal.backoff_failures += 1
        portal.backoff_until = utcnow() + delay_after(portal.backoff_failures)
        return portal.backoff_until


def clear_backoff(member_id):
    """Forget the portal's failures in a row: a call went through."""
    with transaction() as session:
        session.execute(
            update(Portal)
            .where(Portal.member_id == member_id)
            .values(backoff_failures=0, backoff_until=None)
        )


def application_token_matches(portal, presented):
    """Return whether ``presented`` is the portal's stored ``application_token``."""
    if portal is None or not portal.application_token:
        return False
    return hmac.compare_digest(portal.application_token.encode(), str(presented).encode())


def record_install_event(event, app_info, server_endpoint, replace_application_token=False):
    """Record a verified ONAPPINSTALL; return whether it was taken.

    The portal is created when the event comes first (an API-only app has no install page), and
    marked installed with the event's ``application_token``. The event's tokens replace the
    stored ones only when they are newer (a repeated or late event never brings back a refresh
    token used up meanwhile) or when the stored ones no longer work.

    :param event: the :class:`~b24app.bitrix.events.PortalEvent`, its access token proven.
    :param app_info: the OAuth server's :class:`~b24app.bitrix.oauth.AppInfo` for that token.
    :param server_endpoint: the OAuth server's REST endpoint that vouched for the token.
    :param replace_application_token: take the event's ``application_token`` even when another
        one is stored; only for a portal whose earlier installation is known to be gone.
    :return: False, changing nothing, when the portal holds another ``application_token``.
    """
    auth = event.auth
    expires_at = datetime.fromtimestamp(auth.expires, UTC)
    with transaction() as session:
        portal = _locked_portal(session, auth.member_id)
        if portal is None:
            portal = Portal(member_id=auth.member_id, ping_sequence=0)
            session.add(portal)
            log.info("New portal %s (%s) from ONAPPINSTALL", auth.member_id, app_info.domain)
        elif (
            portal.application_token
            and not application_token_matches(portal, auth.application_token)
            and not replace_application_token
        ):
            return False
        portal.domain = app_info.domain or auth.domain
        portal.client_endpoint = app_info.client_endpoint or auth.client_endpoint
        portal.server_endpoint = server_endpoint
        portal.scope = app_info.scope or auth.scope
        portal.status = app_info.status or auth.status
        if auth.refresh_token and (
            not portal.refresh_token
            or portal.access_problem
            or portal.expires_at is None
            or expires_at > portal.expires_at
        ):
            portal.access_token = auth.access_token
            portal.refresh_token = auth.refresh_token
            portal.expires_at = expires_at
            portal.user_id = app_info.user_id
            _clear_access_problem(portal)
        _mark_installed(portal)
        portal.application_token = auth.application_token
    return True


def forget_portal(member_id):
    """Delete everything stored about the portal; return whether there was anything."""
    with transaction() as session:
        return session.execute(delete(Portal).where(Portal.member_id == member_id)).rowcount > 0


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
                access_problem=None,
                access_problem_detail=None,
                access_problem_at=None,
                backoff_failures=0,
                backoff_until=None,
            )
        )


def pingable_portals():
    """Return ``(member_id, backoff_until)`` of every portal the app can call.

    Those are the portals that have the app installed, tokens for it and no access problem;
    ``backoff_until`` is None or when the portal's backoff ends.
    """
    with reading() as session:
        return list(
            session.execute(
                select(Portal.member_id, Portal.backoff_until)
                .where(Portal.install_state == InstallState.INSTALLED)
                .where(Portal.refresh_token.is_not(None))
                .where(Portal.access_problem.is_(None))
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


def acknowledge_ping(member_id, sequence, user_id, sent_at, kept_since):
    """Count the user's acknowledgement of a ping once; return False if it was counted already
    (or the portal is not stored).

    Acknowledgements of pings sent before ``kept_since`` are forgotten on the way: receipts
    that old are refused anyway.
    """
    try:
        with transaction() as session:
            session.execute(
                delete(PingAcknowledgement).where(
                    PingAcknowledgement.member_id == member_id,
                    PingAcknowledgement.sent_at < kept_since,
                )
            )
            session.add(
                PingAcknowledgement(
                    member_id=member_id, sequence=sequence, user_id=user_id or 0, sent_at=sent_at
                )
            )
    except IntegrityError:
        return False
    return True
