"""The event handler: the portal's REST events (ONAPPINSTALL, ONAPPUNINSTALL, …) arrive here.

Events come form-encoded with bracketed keys, asynchronously, at most once, sometimes late or
twice. Each is logged as received before anything else, then checked, then acted on.
``application_token`` (first sent with ONAPPINSTALL) is the only proof that a later event comes
from its portal; ONAPPINSTALL itself is proven by its access token, as a frame handshake is.
"""

import logging

from flask import Blueprint, current_app, request

from b24app import eventlog, store
from b24app.bitrix import oauth_client, rest_client
from b24app.bitrix.errors import BitrixError
from b24app.bitrix.events import EventError, parse_event
from b24app.eventlog import Kind, Outcome

log = logging.getLogger(__name__)

bp = Blueprint("events", __name__)


@bp.errorhandler(413)
def event_too_large(error):
    """Refuse an oversized event in the same JSON shape as every other refusal here."""
    return {"error": "The event is larger than any portal sends."}, 413


@bp.post("/events")
def events():
    """Receive the portal's events (form-encoded with bracketed keys) and act on them."""
    return receive_event()


def receive_event(api_only=False):
    """Log, check and act on the event in the current request; return the answer.

    :param api_only: the event came to the install URL, where a portal posts ONAPPINSTALL for
        an app without a user interface; such an app binds its other handlers itself.
    """
    try:
        event = parse_event(request.form.items(multi=True))
    except EventError as exc:
        return {"error": str(exc)}, 400
    _record(
        event,
        Outcome.RECEIVED,
        "received",
        handler_id=event.handler_id,
        ts=event.ts,
        data=event.data,
    )
    if event.name == "ONAPPINSTALL":
        return _on_app_install(event, api_only)
    portal = store.get_portal(event.auth.member_id)
    if event.name == "ONAPPUNINSTALL":
        return _on_app_uninstall(event, portal)
    refusal = _application_token_refusal(event, portal)
    if refusal:
        return refusal
    log.info("Event %s for portal %s needs no action", event.name, event.auth.member_id)
    _record(event, Outcome.OK, "verified; needs no action")
    return {"result": "ok"}


def _record(event, outcome, message, **details):
    """Log one step of handling ``event``."""
    eventlog.record(
        Kind.EVENT,
        outcome,
        f"{event.name} {message}",
        member_id=event.auth.member_id,
        details={"event": event.name, **details},
    )


def _refuse(event, reason, status, error=None):
    """Log the refusal of ``event`` and return the answer that refuses it."""
    log.warning("Refused %s for portal %s: %s", event.name, event.auth.member_id, reason)
    _record(event, Outcome.REFUSED, f"refused: {reason}", status=status)
    return {"error": error or f"The event was refused: {reason}."}, status


def _application_token_refusal(event, portal, required=True):
    """Return the answer refusing an event without the portal's ``application_token``, or None.

    :param required: False lets an event through for a portal that holds no token to compare
        with (its ONAPPINSTALL never arrived); it must still present one.
    """
    if not event.auth.application_token:
        return _refuse(
            event,
            "no application_token",
            401,
            "The event carries no auth[application_token].",
        )
    if portal is None:
        return _refuse(event, "unknown portal", 403, "The portal is not known to the app.")
    if not required and not portal.application_token:
        return None
    if not store.application_token_matches(portal, event.auth.application_token):
        return _refuse(
            event,
            "wrong application_token",
            403,
            "The event's application_token does not match.",
        )
    return None


def _on_app_uninstall(event, portal):
    member_id = event.auth.member_id
    refusal = _application_token_refusal(event, portal, required=False)
    if refusal:
        return refusal
    # Portals put application_token into every user's frame, so it alone cannot prove an
    # uninstall: the portal must also have stopped accepting the app.
    if _app_still_installed(member_id):
        return _refuse(
            event, "the app still works there", 409, "The portal still has the app installed."
        )
    _record(event, Outcome.OK, "verified")
    if event.clean:
        store.forget_portal(member_id)
        deleted = eventlog.pruning.forget_portal(member_id)
        log.info("Portal %s uninstalled the app; its tokens and data are deleted", member_id)
        message = f"Uninstalled; tokens and data deleted ({deleted} log rows)"
    else:
        store.mark_uninstalled(member_id)
        log.info("Portal %s uninstalled the app; its tokens are deleted", member_id)
        message = "Uninstalled; tokens deleted"
    # With CLEAN this is the one row about the portal that is kept: that it was removed.
    eventlog.record(
        Kind.UNINSTALL,
        Outcome.OK,
        message,
        member_id=member_id,
        domain=portal.domain,
        details={"clean": event.clean},
    )
    return {"result": "ok"}


def _app_still_installed(member_id):
    """Return whether the portal still answers the app's stored token with an installed app."""
    try:
        answer = rest_client().call(member_id, "app.info", attempts=1)
    except BitrixError as exc:
        # Refused tokens are what an uninstall looks like. A portal that cannot be reached
        # proves nothing either way, and the event did carry the right application_token.
        log.info("Portal %s: app.info with the stored tokens failed, %s", member_id, exc.code)
        return False
    result = answer.get("result")
    return isinstance(result, dict) and result.get("INSTALLED") is True


def _on_app_install(event, api_only):
    # The first event of an installation carries no secret we know yet: prove its token, and
    # that it is an administrator's, since only administrators install apps.
    auth = event.auth
    member_id = auth.member_id
    if not auth.access_token or not auth.application_token:
        return _refuse(
            event,
            "no token",
            400,
            "ONAPPINSTALL needs auth[access_token] and auth[application_token].",
        )
    try:
        info = oauth_client().app_info(auth.access_token, auth.server_endpoint)
    except BitrixError as exc:
        return _refuse(
            event,
            f"the OAuth server rejected its token, {exc.code}",
            403,
            f"The OAuth server rejected the event's token ({exc.code}).",
        )
    if info.client_id != oauth_client().client_id or info.member_id != member_id:
        return _refuse(
            event,
            "token of another app or portal",
            403,
            "The event's token belongs to another application or portal.",
        )
    try:
        admin = rest_client().user_is_admin(info.client_endpoint, auth.access_token)
    except BitrixError as exc:
        return _refuse(
            event,
            f"user.admin failed, {exc.code}",
            403,
            f"The portal could not confirm the event's user ({exc.code}).",
        )
    if not admin:
        return _refuse(
            event,
            "not an administrator's token",
            403,
            "ONAPPINSTALL must carry an administrator's token.",
        )

    server_endpoint = oauth_client().server_endpoint(auth.server_endpoint)
    if not store.record_install_event(event, info, server_endpoint):
        # One installation keeps one application_token. Another one means a new installation
        # whose uninstall never reached us, which the stored tokens, now dead, would show.
        if _app_still_installed(member_id):
            return _refuse(
                event,
                "another application_token",
                403,
                "The portal's application_token is already set; only an uninstall clears it.",
            )
        log.warning(
            "Portal %s: installed again without an uninstall event; new application_token",
            member_id,
        )
        store.record_install_event(event, info, server_endpoint, replace_application_token=True)
    log.info("Portal %s finished installing the app", member_id)
    _record(event, Outcome.OK, "verified", user_id=info.user_id)
    eventlog.record(
        Kind.INSTALL_FINISH,
        Outcome.OK,
        "Install finished" + (" (API-only app)" if api_only else ""),
        member_id=member_id,
        domain=info.domain,
    )
    if api_only:
        _bind_uninstall_handler(member_id)
    return {"result": "ok"}


def _bind_uninstall_handler(member_id):
    """Bind ONAPPUNINSTALL for an app without an install page; a failure is logged, not fatal.

    The portal does not send ONAPPINSTALL again, so failing its answer would gain nothing.
    """
    handler = current_app.config["PUBLIC_URL"] + "/events"
    try:
        bound = rest_client().bind_event(member_id, "ONAPPUNINSTALL", handler)
    except BitrixError as exc:
        log.warning("Portal %s: ONAPPUNINSTALL could not be bound, %s", member_id, exc.code)
        eventlog.record(
            Kind.INSTALL_FINISH,
            Outcome.FAILED,
            f"ONAPPUNINSTALL not bound: {exc.code}",
            member_id=member_id,
            details={"error": exc.code},
        )
        return
    log.info("Portal %s: ONAPPUNINSTALL %s", member_id, "bound" if bound else "already bound")
