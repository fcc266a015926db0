"""The pages a portal loads into its frame: the install path and the handler path."""

import logging
import os
from urllib.parse import urlsplit

from flask import Blueprint, abort, current_app, render_template, request, send_from_directory

from b24app import PROJECT_ROOT, eventlog, store
from b24app.admin import frame_page as admin_frame_page
from b24app.api import issue_page_token
from b24app.bitrix import oauth_client, rest_client
from b24app.bitrix.errors import BitrixError
from b24app.bitrix.frame import (
    MEMBER_ID_PATTERN,
    HandshakeError,
    parse_frame_request,
    verify_frame_request,
)
from b24app.eventlog import Kind, Outcome
from b24app.events import receive_event

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
    """Handle the install handshake (the initial installation path) and show the install page.

    An app that uses the API only has no install page: its portal posts the ONAPPINSTALL event
    here instead, with no browser involved.
    """
    if request.method == "POST" and "event" in request.form:
        return receive_event(api_only=True)
    return _frame_page("install")


@bp.route("/app", methods=["GET", "POST"])
def app_page():
    """Handle the placement handshake (the handler path) and show the app page.

    Opened with the placement option ``view=admin`` (the app page's own admin button opens the
    app so, through the SDK's ``openApplication``), it shows the admin page instead.
    """
    return _frame_page("app")


@bp.route("/admin", methods=["GET", "POST"])
def admin_page():
    """Handle the placement handshake of the admin page, for a placement bound to it directly."""
    return _frame_page("admin")


def _frame_page(mode):
    if request.method == "GET":
        return render_template("outside.html", message=OUTSIDE_MESSAGE)

    try:
        frame = parse_frame_request(request.args, request.form)
        info = verify_frame_request(frame, oauth_client())
    except HandshakeError as exc:
        claimed_member_id = request.form.get("member_id", "")[:64]
        log.warning(
            "Rejected %s handshake for member_id %r: %s", mode, claimed_member_id, exc.message
        )
        # The member_id is only claimed; the row shows its portal's admins who was turned away.
        # Not handled yet: nothing limits how many such rows a stranger can cause.
        eventlog.record(
            Kind.HANDSHAKE,
            Outcome.REFUSED,
            exc.message,
            member_id=claimed_member_id if MEMBER_ID_PATTERN.match(claimed_member_id) else None,
            details={"path": mode, "status": exc.status},
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
    _record_open(mode, frame, portal, info.user_id, admin)
    if mode == "admin" or (mode == "app" and frame.placement_options.get("view") == "admin"):
        return admin_frame_page(frame, portal, info.user_id, admin)
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
        # The portal's own answer to user.admin: whether to offer the admin page.
        "isAdmin": admin,
    }
    # A portal sends no events to an app it holds as not fully installed; admins can fix that.
    install_unfinished = mode == "app" and admin and not info.installed
    response = current_app.make_response(
        render_template(
            f"{mode}.html",
            portal=portal,
            page_config=page_config,
            install_unfinished=install_unfinished,
            jssdk_url=config["JSSDK_URL"],
        )
    )
    response.headers["Content-Security-Policy"] = _frame_page_policy(frame.portal_origin)
    response.headers["Cache-Control"] = "no-store"
    return response


def _record_open(mode, frame, portal, user_id, is_admin):
    """Log the verified handshake, and the install's start or the app's opening."""
    where = {"member_id": portal.member_id, "domain": portal.domain}
    details = {"path": mode, "user_id": user_id, "placement": frame.placement}
    eventlog.record(
        Kind.HANDSHAKE, Outcome.OK, f"Verified {mode} handshake", details=details, **where
    )
    if mode == "install":
        eventlog.record(
            Kind.INSTALL_START, Outcome.OK, f"Install page opened by user {user_id}", **where
        )
    elif mode == "app":
        eventlog.record(
            Kind.APP_OPEN,
            Outcome.OK,
            f"Opened by user {user_id} in placement {frame.placement}",
            details={**details, "admin": is_admin, "options": frame.placement_options},
            **where,
        )


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
