"""The event handler: the portal's REST events (ONAPPINSTALL, ONAPPUNINSTALL, …) arrive here.

Events come form-encoded with bracketed keys, asynchronously, at most once. ``application_token``
(first sent with ONAPPINSTALL) is the only proof that a later event comes from its portal.
"""

import logging
import re

from flask import Blueprint, request

from b24app import store
from b24app.bitrix import oauth_client, rest_client
from b24app.bitrix.forms import FormError, unflatten
from b24app.bitrix.frame import MEMBER_ID_PATTERN
from b24app.bitrix.oauth import OAuthError
from b24app.bitrix.rest import RestError

log = logging.getLogger(__name__)

bp = Blueprint("events", __name__)

EVENT_NAME = re.compile(r"^[A-Z0-9_]{1,64}$")


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
        return _on_app_install(member_id, auth, payload)

    portal = store.get_portal(member_id)
    if not store.application_token_matches(portal, auth.get("application_token", "")):
        log.warning("Refused event %s for portal %s: wrong application_token", event, member_id)
        return {"error": "The event's application_token does not match."}, 403

    if event == "ONAPPUNINSTALL":
        store.mark_uninstalled(member_id)
        log.info("Portal %s uninstalled the app; its tokens are deleted", member_id)
    else:
        log.info("Event %s for portal %s needs no action", event, member_id)
    return {"result": "ok"}


def _on_app_install(member_id, auth, payload):
    # The first event of an installation carries no secret we know yet: prove its token, and
    # that it is an administrator's, since only administrators install apps.
    access_token = str(auth.get("access_token", ""))
    application_token = str(auth.get("application_token", ""))
    if not access_token or not application_token:
        return {"error": "ONAPPINSTALL needs auth[access_token] and auth[application_token]."}, 400
    try:
        info = oauth_client().app_info(access_token)
    except OAuthError as exc:
        log.warning("Refused ONAPPINSTALL for portal %s: %s", member_id, exc.code)
        return {"error": f"The OAuth server rejected the event's token ({exc.code})."}, 403
    if info.client_id != oauth_client().client_id or info.member_id != member_id:
        log.warning(
            "Refused ONAPPINSTALL for portal %s: token of another app or portal", member_id
        )
        return {"error": "The event's token belongs to another application or portal."}, 403
    try:
        admin = rest_client().call_with_token(info.client_endpoint, access_token, "user.admin")
    except RestError as exc:
        log.warning(
            "Refused ONAPPINSTALL for portal %s: user.admin failed, %s", member_id, exc.code
        )
        return {"error": f"The portal could not confirm the event's user ({exc.code})."}, 403
    if admin.get("result") is not True:
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
