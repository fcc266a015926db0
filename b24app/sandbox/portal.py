"""The sandbox portal's pages: the portal list and a portal with the app in its frame.

The page's script (``static/sandbox/portal.js``) plays the parent side of the frame protocol;
the JSON endpoints here do the server side of what it asks for (fresh tokens for each frame
open, ``refreshAuth``, ``setInstallFinish``), through the same state methods tests use.

The faults and condition endpoints let tests in other processes, and developers with curl,
make a portal fail (see ``faults.py``):

- ``GET /portal/<member_id>/faults`` lists its faults; ``POST`` with a JSON body
  ``{"target", "kind", "times", "method", "delay"}`` adds one (201); ``DELETE`` clears them;
- ``GET /portal/<member_id>/condition`` tells its condition; ``POST`` with a JSON body
  ``{"condition": "unpaid" | "deleted" | null}`` sets it (the portal page's script does so).

They take JSON only, so another site's page cannot use them: a cross-site JSON request needs
a CORS preflight, which the portal never grants. A bad request is answered 400 with
``{"error": "INVALID_REQUEST", "error_description"}`` and changes nothing.
"""

import logging

from flask import (
    Blueprint,
    abort,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)

from b24app.sandbox.state import PORTAL_CONDITIONS, SandboxError

log = logging.getLogger(__name__)

bp = Blueprint("sandbox_portal", __name__)


def _state():
    return current_app.extensions["sandbox"]


def _refusal(error, status=403):
    return jsonify(error="ACCESS_DENIED", error_description=str(error)), status


def _json_body():
    body = request.get_json(silent=True)
    return body if isinstance(body, dict) else {}


def _invalid(error, status=400):
    return jsonify(error="INVALID_REQUEST", error_description=str(error)), status


def _user_id(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


@bp.after_request
def forbid_inline_scripts(response):
    """Allow scripts from the sandbox's own static files only."""
    if response.mimetype == "text/html":
        response.headers["Content-Security-Policy"] = "script-src 'self'"
    return response


@bp.get("/")
def index():
    """List the sandbox portals and offer to create one."""
    return render_template("sandbox/index.html", portals=_state().portals)


@bp.post("/portals")
def create_portal():
    """Create a portal and show it to its admin."""
    portal = _state().create_portal()
    log.info("Sandbox portal %s created", portal.member_id)
    return redirect(url_for(".show_portal", member_id=portal.member_id, user=1))


@bp.get("/portal/<member_id>/")
def show_portal(member_id):
    """Show a portal as one of its users sees it, with the app's frame."""
    state = _state()
    try:
        portal = state.get_portal(member_id)
        user = state.get_user(member_id, request.args.get("user", "1"))
    except SandboxError as error:
        abort(404, str(error))
    return render_template(
        "sandbox/portal.html",
        portal=portal,
        user=user,
        state=state,
        handlers=state.bound_events(member_id),
        conditions=PORTAL_CONDITIONS,
    )


@bp.post("/portal/<member_id>/frame")
def launch_frame(member_id):
    """Issue fresh tokens and return the frame POST that opens the app for the user."""
    body = _json_body()
    install = body.get("install")
    if install not in (True, False, None):
        return _refusal("install must be true, false or null", 400)
    try:
        launch = _state().frame_launch(
            member_id,
            user_id=_user_id(body.get("user")),
            placement=body.get("placement") or "DEFAULT",
            placement_options=body.get("placement_options"),
            install=install,
        )
    except SandboxError as error:
        return _refusal(error)
    log.info(
        "Portal %s opens the app for user %s (%s)",
        member_id,
        launch.user_id,
        "install" if launch.install else launch.form["PLACEMENT"],
    )
    return jsonify(launch.as_json())


def _launch_for(member_id, body):
    """Return the open frame's launch named by ``app_sid``, checked against portal and user."""
    launch = _state().find_launch(str(body.get("app_sid") or ""))
    if (
        launch is None
        or launch.member_id != member_id
        or launch.user_id != _user_id(body.get("user"))
    ):
        raise SandboxError("No such app frame is open on this portal.")
    return launch


@bp.post("/portal/<member_id>/refresh-auth")
def refresh_auth(member_id):
    """Answer a frame's ``refreshAuth`` with fresh tokens for its user."""
    body = _json_body()
    try:
        launch = _launch_for(member_id, body)
        tokens = _state().refresh_frame_auth(member_id, launch.user_id)
    except SandboxError as error:
        return _refusal(error)
    return jsonify(tokens)


@bp.post("/portal/<member_id>/install-finish")
def install_finish(member_id):
    """Do what ``setInstallFinish`` asks: mark the app installed and send ONAPPINSTALL."""
    body = _json_body()
    try:
        launch = _launch_for(member_id, body)
        if not launch.install:
            raise SandboxError("The frame was not opened for installation.")
        _state().finish_install(member_id, launch.user_id)
    except SandboxError as error:
        return _refusal(error)
    log.info("Portal %s: app installed by user %s", member_id, launch.user_id)
    return jsonify(installed=True)


@bp.post("/portal/<member_id>/install-api-only")
def install_api_only(member_id):
    """Install the app as an API-only one: ONAPPINSTALL goes to its install URL, no frame."""
    state = _state()
    try:
        user = state.get_user(member_id, request.form.get("user"))
        state.install_api_only(member_id, user.id)
    except SandboxError as error:
        abort(403, str(error))
    log.info("Portal %s: app installed as API-only by user %s", member_id, user.id)
    return redirect(url_for(".show_portal", member_id=member_id, user=user.id))


@bp.post("/portal/<member_id>/uninstall")
def uninstall(member_id):
    """Uninstall the app as the portal's admin, optionally deleting its data."""
    state = _state()
    try:
        user = state.get_user(member_id, request.form.get("user"))
        if not user.admin:
            raise SandboxError("Only an administrator can uninstall the application.")
        state.uninstall(member_id, clean=request.form.get("clean") == "1")
    except SandboxError as error:
        abort(403, str(error))
    log.info("Portal %s: app uninstalled", member_id)
    return redirect(url_for(".show_portal", member_id=member_id, user=user.id))


@bp.get("/portal/<member_id>/faults")
def list_faults(member_id):
    """List the faults the portal still has to answer with, oldest first."""
    try:
        faults = _state().faults(member_id)
    except SandboxError as error:
        return _invalid(error, 404)
    return jsonify(faults=[fault.as_json() for fault in faults])


@bp.post("/portal/<member_id>/faults")
def add_fault(member_id):
    """Add a fault to the portal's next requests, as the JSON body describes it."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return _invalid("The body must be a JSON object.")
    unknown = sorted(set(body) - {"target", "kind", "times", "method", "delay"})
    if unknown:
        return _invalid(f"Unknown field(s): {', '.join(unknown)}.")
    state = _state()
    try:
        state.get_portal(member_id)
    except SandboxError as error:
        return _invalid(error, 404)
    try:
        fault = state.add_fault(
            member_id,
            body.get("target"),
            body.get("kind"),
            times=body.get("times", 1),
            method=body.get("method"),
            delay=body.get("delay"),
        )
    except SandboxError as error:
        return _invalid(error)
    log.info("Portal %s: fault %s added to %s", member_id, fault.kind, fault.target)
    return jsonify(fault.as_json()), 201


@bp.delete("/portal/<member_id>/faults")
def clear_faults(member_id):
    """Remove all of the portal's faults and say how many there were."""
    state = _state()
    try:
        state.get_portal(member_id)
    except SandboxError as error:
        return _invalid(error, 404)
    cleared = state.clear_faults(member_id)
    log.info("Portal %s: %d fault(s) cleared", member_id, cleared)
    return jsonify(cleared=cleared)


@bp.get("/portal/<member_id>/condition")
def show_condition(member_id):
    """Tell the portal's condition: ``unpaid``, ``deleted`` or null."""
    try:
        portal = _state().get_portal(member_id)
    except SandboxError as error:
        return _invalid(error, 404)
    return jsonify(condition=portal.condition)


@bp.post("/portal/<member_id>/condition")
def set_condition(member_id):
    """Set the portal's condition from the JSON body ``{"condition": …}``."""
    state = _state()
    try:
        state.get_portal(member_id)
    except SandboxError as error:
        return _invalid(error, 404)
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or set(body) != {"condition"}:
        return _invalid('The body must be a JSON object with "condition" and nothing else.')
    try:
        portal = state.set_portal_condition(member_id, body["condition"])
    except SandboxError as error:
        return _invalid(error)
    log.info("Portal %s: condition set to %s", member_id, portal.condition or "in order")
    return jsonify(condition=portal.condition)
