"""The sandbox's OAuth server (``/oauth-server``): token refresh and ``app.info`` by token.

It plays the part of oauth.bitrix.info for the one registered app: refresh tokens are single-use
and rotate, and ``app.info`` tells which app, portal and user a token belongs to. A portal's
faults and condition (see ``faults.py``) may answer a request instead.
"""

import time
from urllib.parse import urlsplit

from flask import Blueprint, current_app, jsonify, request

from b24app.sandbox import faults
from b24app.sandbox.rest import error_response, rest_time
from b24app.sandbox.state import APP_SCOPE, APP_STATUS, APP_VERSION, ProtocolError

bp = Blueprint("sandbox_oauth", __name__, url_prefix="/oauth-server")


def _param(name):
    value = request.args.get(name)
    if value is None:
        value = request.form.get(name)
    return value


@bp.route("/oauth/token/", methods=["GET", "POST"])
def token():
    """Exchange a refresh token for a new access and refresh token pair."""
    state = current_app.extensions["sandbox"]
    member_id = state.count_refresh_request(_param("refresh_token"))
    if member_id is not None:
        refusal = faults.refusal(state, member_id, "oauth")
        if refusal is not None:
            refusal.headers["Cache-Control"] = "no-store"
            return refusal
    try:
        for name in ("grant_type", "client_id", "client_secret", "refresh_token"):
            if not _param(name):
                raise ProtocolError(400, "invalid_request", f'No "{name}" parameter found')
        if _param("grant_type") != "refresh_token":
            raise ProtocolError(400, "invalid_request", "Unsupported grant_type")
        issued = state.refresh(
            _param("client_id"), _param("client_secret"), _param("refresh_token")
        )
    except ProtocolError as error:
        response, status = error_response(error)
        response.headers["Cache-Control"] = "no-store"
        return response, status

    response = jsonify(state.token_response(issued))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.route("/rest/<path:name>", methods=["GET", "POST"])
def rest(name):
    """Answer the OAuth server's REST call ``app.info``: whose token is this?"""
    start = time.time()
    state = current_app.extensions["sandbox"]
    if name.lower().removesuffix(".json") != "app.info":
        return error_response(ProtocolError(404, "ERROR_METHOD_NOT_FOUND", "Method not found!"))

    access_token = _param("auth") or _param("access_token")
    if access_token is None and request.is_json:
        body = request.get_json(silent=True)
        access_token = body.get("auth") if isinstance(body, dict) else None
    member_id = state.member_of_access_token(access_token)
    if member_id is not None:
        refusal = faults.refusal(state, member_id, "oauth", "app.info")
        if refusal is not None:
            return refusal
    found = state.find_token(access_token)
    if found is None:
        return error_response(
            ProtocolError(401, "invalid_token", "Unable to get application by token")
        )
    if found.access_expires <= time.time():
        return error_response(
            ProtocolError(401, "expired_token", "The access token provided has expired.")
        )

    portal = state.get_portal(found.member_id)
    result = {
        "client_id": state.client_id,
        "scope": APP_SCOPE,
        "expires": int(found.access_expires),
        "install": {
            "installed": portal.installed,
            "version": APP_VERSION,
            "status": APP_STATUS,
            "scope": APP_SCOPE,
            "domain": state.domain,
            "uri": f"{urlsplit(state.sandbox_url).scheme}://{state.domain}",
            "client_endpoint": state.client_endpoint,
            "member_id": portal.member_id,
            "member_type": "PORTAL",
        },
        "user_id": found.user_id,
    }
    return jsonify(result=result, time=rest_time(start))
