"""The event handler: the portal's REST events (ONAPPINSTALL, ONAPPUNINSTALL, …) arrive here.

Events come form-encoded with bracketed keys, asynchronously, at most once. ``application_token``
(first sent with ONAPPINSTALL) is the only proof that a later event comes from its portal.
"""

import logging
import re

from flask import Blueprint, request

from b24app import eventlog, store
from b24app.bitrix import oauth_client, rest_client
from b24app.bitrix.errors import BitrixError
from b24app.bitrix.forms import FormError, unflatten
from b24app.bitrix.frame import MEMBER_ID_PATTERN
from b24app.eventlog import Kind, Outcome

log = logging.getLogger(__name__)

bp = Blueprint("events", __name__)

EVENT_NAME = re.compile(r"^[A-Z0-9_]{1,64}$")


@bp.errorhandler(413)
def event_too_large(error):
    """Refuse an oversized event in the same JSON shape as every other refusal here."""
    return {"error": "The event is larger than any portal sends."}, 413


@bp.post("/events")
def events():
    """Receive the portal's events (form-encoded with bracketed keys) and act on them."""
    try:
        payload = unflatten(request.form.items(multi=True))
    except FormError as exc:
        return {"error": str(exc)}, 400
    event = str(payload.get("event", "")).upper()
    auth = payload.get("auth") if isinstance(payload.get("auth"), dict) else {}
    member_id = str(auth.get("member_id", ""))
    if not event or not member_id:
        return {"error": "An event needs event and auth[member_id]."}, 400
    # Both end up in log lines: anything but the protocol's own characters is refused.
    if not EVENT_NAME.match(event) or not MEMBER_ID_PATTERN.match(member_id):
        return {"error": "The event's name or auth[member_id] is malformed."}, 400

    if event == "ONAPPINSTALL":
        return _logged_install(member_id, _on_app_install(member_id, auth))

    portal = store.get_portal(member_id)
    presented = auth.get("application_token", "")
    if event == "ONAPPUNINSTALL":
        return _on_app_uninstall(member_id, portal, presented)
    if not store.application_token_matches(portal, presented):
        return _refuse_application_token(event, member_id)
    log.info("Event %s for portal %s needs no action", event, member_id)
    _record_event(event, member_id, Outcome.OK, "Verified; needs no action")
    return {"result": "ok"}


def _record_event(event, member_id, outcome, message):
    """Log one received event with how it was answered."""
    eventlog.record(
        Kind.EVENT, outcome, f"{event}: {message}", member_id=member_id, details={"event": event}
    )


def _refuse(event, member_id, message, body, status):
    """Log the refusal of an event and return the answer that refuses it."""
    _record_event(event, member_id, Outcome.REFUSED, message)
    return body, status


def _refuse_application_token(event, member_id):
    log.warning("Refused event %s for portal %s: wrong application_token", event, member_id)
    return _refuse(
        event,
        member_id,
        "wrong application_token",
        {"error": "The event's application_token does not match."},
        403,
    )


def _on_app_uninstall(member_id, portal, presented):
    # A portal whose ONAPPINSTALL never arrived has no application_token to compare with; for
    # it, the portal's own answer below decides alone.
    if portal is None or (
        portal.application_token and not store.application_token_matches(portal, presented)
    ):
        return _refuse_application_token("ONAPPUNINSTALL", member_id)
    # Portals put application_token into every user's frame, so it alone cannot prove an
    # uninstall: the portal must also have stopped accepting the app.
    if _app_still_installed(member_id):
        log.warning("Refused ONAPPUNINSTALL for portal %s: the app still works there", member_id)
        return _refuse(
            "ONAPPUNINSTALL",
            member_id,
            "the app still works there",
            {"error": "The portal still has the app installed."},
            409,
        )
    store.mark_uninstalled(member_id)
    log.info("Portal %s uninstalled the app; its tokens are deleted", member_id)
    _record_event("ONAPPUNINSTALL", member_id, Outcome.OK, "Verified")
    eventlog.record(Kind.UNINSTALL, Outcome.OK, "Uninstalled; tokens deleted", member_id=member_id)
    return {"result": "ok"}


def _app_still_installed(member_id):
    """Return whether the portal still answers the app's stored token with an installed app."""
    try:
        answer = rest_client().call(member_id, "app.info", attempts=1)
    except BitrixError as exc:
        # Refused tokens are what an uninstall looks like. A portal that cannot be reached
        # proves nothing either way, and the event did carry the right application_token.
        log.info("Portal %s: app.info after ONAPPUNINSTALL failed with %s", member_id, exc.code)
        return False
    result = answer.get("result")
    return isinstance(result, dict) and result.get("INSTALLED") is True


def _logged_install(member_id, answer):
    """Log ONAPPINSTALL as answered, and the install as finished when it was taken."""
    body, status = answer if isinstance(answer, tuple) else (answer, 200)
    if status == 200:
        _record_event("ONAPPINSTALL", member_id, Outcome.OK, "Verified")
        eventlog.record(Kind.INSTALL_FINISH, Outcome.OK, "Install finished", member_id=member_id)
    else:
        _record_event("ONAPPINSTALL", member_id, Outcome.REFUSED, body["error"])
    return answer


def _on_app_install(member_id, auth):
    # The first event of an installation carries no secret we know yet: prove its token, and
    # that it is an administrator's, since only administrators install apps.
    access_token = str(auth.get("access_token", ""))
    application_token = str(auth.get("application_token", ""))
    if not access_token or not application_token:
        return {"error": "ONAPPINSTALL needs auth[access_token] and auth[application_token]."}, 400
    try:
        info = oauth_client().app_info(access_token, str(auth.get("server_endpoint", "")))
    except BitrixError as exc:
        log.warning("Refused ONAPPINSTALL for portal %s: %s", member_id, exc.code)
        return {"error": f"The OAuth server rejected the event's token ({exc.code})."}, 403
    if info.client_id != oauth_client().client_id or info.member_id != member_id:
        log.warning(
            "Refused ONAPPINSTALL for portal %s: token of another app or portal", member_id
        )
        return {"error": "The event's token belongs to another application or portal."}, 403
    try:
        admin = rest_client().user_is_admin(info.client_endpoint, access_token)
    except BitrixError as exc:
        log.warning(
            "Refused ONAPPINSTALL for portal %s: user.admin failed, %s", member_id, exc.code
        )
        return {"error": f"The portal could not confirm the event's user ({exc.code})."}, 403
    if not admin:
        log.warning("Refused ONAPPINSTALL for portal %s: not an administrator's", member_id)
        return {"error": "ONAPPINSTALL must carry an administrator's token."}, 403

    # Not handled yet: ONAPPINSTALL arriving before any frame handshake (API-only apps).
    outcome = store.record_install_event(member_id, application_token)
    if outcome is None:
        log.warning("ONAPPINSTALL for unknown portal %s ignored", member_id)
        return {"error": "The portal is not known to the app yet."}, 404
    if outcome is False:
        log.warning("Refused ONAPPINSTALL for portal %s: another application_token", member_id)
        return {
            "error": "The portal's application_token is already set; only an uninstall clears it."
        }, 403
    log.info("Portal %s finished installing the app", member_id)
    return {"result": "ok"}
