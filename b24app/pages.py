"""The pages a portal loads into its frame: the install path and the handler path."""

import logging
import os
from urllib.parse import urlsplit

from flask import Blueprint, abort, current_app, render_template, request, send_from_directory

from b24app import PROJECT_ROOT, store
from b24app.api import issue_page_token
from b24app.bitrix import oauth_client, rest_client
from b24app.bitrix.errors import BitrixError
from b24app.bitrix.frame import HandshakeError, parse_frame_request, verify_frame_request

log = logging.getLogger(__name__)

bp = Blueprint("pages", __name__)

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
    admin = _user_is_admin(info.client_endpoint, frame)
    portal = store.save_handshake(
        frame,
        info,
        server_endpoint=oauth_client().server_endpoint(frame.server_endpoint),
        install_finished=info.installed,
        replace_tokens=admin,
    )
    log.info(
        "Verified %s handshake for portal %s (%s), user %s%s, placement %s",
        mode,
        portal.member_id,
        portal.domain,
        info.user_id,
        " (administrator)" if admin else "",
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


def _user_is_admin(client_endpoint, frame):
    """Return whether the frame's user administers the portal; False when it cannot be told."""
    try:
        return rest_client().user_is_admin(client_endpoint, frame.auth_id)
    except BitrixError as exc:
        log.warning("Portal %s: user.admin failed with %s", frame.member_id, exc.code)
        return False


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
