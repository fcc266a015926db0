"""The pages a portal loads into its frame (install path, handler path) and the event handler."""

import logging
import os
import re
from urllib.parse import urlsplit

from flask import Blueprint, abort, current_app, render_template, request, send_from_directory

from b24app import PROJECT_ROOT, store
from b24app.api import issue_page_token
from b24app.bitrix import oauth_client, rest_client
from b24app.bitrix.forms import FormError, unflatten
from b24app.bitrix.frame import (
    MEMBER_ID_PATTERN,
    HandshakeError,
    parse_frame_request,
    verify_frame_request,
)
from b24app.bitrix.oauth import OAuthError
from b24app.bitrix.rest import RestError

log = logging.getLogger(__name__)

bp = Blueprint("pages", __name__)

EVENT_NAME = re.compile(r"^[A-Z0-9_]{1,64}$")

JSSDK_DIR = os.path.join(PROJECT_ROOT, "node_modules", "@bitrix24", "b24jssdk", "dist", "umd")

OUTSIDE_MESSAGE = (
    "This is a Bitrix24 application. It works inside a Bitrix24 portal: open it from the "
    "portal's Applications menu."
)


@bp.get("/")
def index():
    """Show what this server is, and in sandbox mode where the sandbox portal is."""
    return render_template("index.html")


@bp.route("/install", methods=["GET", "POST"])
def install():
    """Handle the install handshake (the initial installation path) and show the install page."""
    return _frame_page("install")


@bp.route("/app", methods=["GET", "POST"])
def app_page():
    """Handle the placement handshake (the handler path) and show the app page."""
    return _frame_page("app")


def _frame_page(mode):
    if request.method == "GET":
        return render_template("outside.html", message=OUTSIDE_MESSAGE)

    try:
        frame = parse_frame_request(request.args, request.form)
        info = verify_frame_request(frame, oauth_client())
    except HandshakeError as exc:
        log.warning(
            "Rejected %s handshake for member_id %r: %s",
            mode,
            request.form.get("member_id", "")[:64],
            exc.message,
        )
        return render_template("error.html", message=exc.message), exc.status

    config = current_app.config
    portal = store.save_handshake(
        frame,
        info,
        server_endpoint=config["OAUTH_SERVER"] + "/rest/",
        install_finished=info.installed,
    )
    log.info(
        "Verified %s handshake for portal %s (%s), user %s, placement %s",
        mode,
        portal.member_id,
        portal.domain,
        info.user_id,
        frame.placement,
    )
    page_config = {
        "mode": mode,
        "moduleId": config["PULL_MODULE_ID"],
        "apiToken": issue_page_token(portal.member_id, info.user_id),
        "apiUrl": config["PUBLIC_URL"] + "/api",
        "eventHandlerUrl": config["PUBLIC_URL"] + "/events",
        "memberId": portal.member_id,
        "domain": portal.domain,
        "placement": frame.placement,
        "placementOptions": frame.placement_options,
        "pingInterval": config["PING_INTERVAL"],
    }
    response = current_app.make_response(
        render_template(
            f"{mode}.html",
            portal=portal,
            page_config=page_config,
            jssdk_url=config["JSSDK_URL"],
        )
    )
    response.headers["Content-Security-Policy"] = _frame_page_policy(frame.portal_origin)
    response.headers["Cache-Control"] = "no-store"
    return response


def _frame_page_policy(portal_origin):
    """Return the CSP of a frame page: framed by its portal only, scripts from known places."""
    script_sources = ["'self'"]
    jssdk = urlsplit(current_app.config["JSSDK_URL"])
    if jssdk.scheme and jssdk.netloc:
        script_sources.append(f"{jssdk.scheme}://{jssdk.netloc}")
    return "; ".join(
        [
            "default-src 'self'",
            "script-src " + " ".join(script_sources),
            # The SDK talks to the portal's REST API and to its push server, whose host comes
            # from the portal's Pull configuration and cannot be known in advance.
            "connect-src 'self' http: https: ws: wss:",
            "img-src 'self' data: https:",
            "style-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            f"frame-ancestors {portal_origin}",
        ]
    )


@bp.get("/vendor/b24jssdk/<path:filename>")
def jssdk(filename):
    """Serve the JS SDK's browser build, installed from npm."""
    if not os.path.isdir(JSSDK_DIR):
        abort(404, "The JS SDK is not installed; run npm ci.")
    return send_from_directory(JSSDK_DIR, filename, max_age=3600)


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
