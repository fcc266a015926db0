"""The portal's REST API at ``/rest/<method>``: the methods the app and the JS SDK call.

Every success is ``{"result": …, "time": {…}}`` and every refusal ``{"error",
"error_description"}`` with the portal's HTTP status. Browsers call it from the app's origin,
so every answer carries CORS headers.

Before a call runs, the portal's faults and condition may answer it instead (see
``faults.py``), and its rate limit may refuse it with ``QUERY_LIMIT_EXCEEDED``.
"""

import re
import time
from urllib.parse import quote, urlsplit

from flask import Blueprint, current_app, jsonify, request

from b24app import safejson
from b24app.bitrix import forms
from b24app.sandbox import faults
from b24app.sandbox.state import (
    APP_SCOPE,
    APP_STATUS,
    APP_VERSION,
    LANGUAGE_ID,
    ProtocolError,
    iso_time,
)

bp = Blueprint("sandbox_rest", __name__, url_prefix="/rest")

BATCH_LIMIT = 50
# Events a local app with our scopes may bind; names are compared in upper case.
KNOWN_EVENTS = {
    "ONAPPINSTALL",
    "ONAPPUNINSTALL",
    "ONAPPUPDATE",
    "ONAPPPAYMENT",
    "ONAPPTEST",
    "ONAPPMETHODCONFIRM",
}
# Method families the portal has but the sandbox app's scope does not grant.
SCOPED_PREFIXES = {
    "bizproc.": "bizproc",
    "calendar.": "calendar",
    "catalog.": "catalog",
    "crm.": "crm",
    "department.": "department",
    "disk.": "disk",
    "entity.": "entity",
    "im.": "im",
    "imopenlines.": "imopenlines",
    "landing.": "landing",
    "lists.": "lists",
    "sale.": "sale",
    "sonet_group.": "sonet_group",
    "task.": "task",
    "tasks.": "task",
    "telephony.": "telephony",
    "timeman.": "timeman",
    "user.": "user",
}
COMMAND_PATTERN = re.compile(r"^[0-9A-Za-z_:|.\-]+$")
MODULE_ID_PATTERN = re.compile(r"^[a-z0-9._]+$")
BATCH_REFERENCE = re.compile(r"\$result\[([^\]]+)\]((?:\[[^\]]*\])*)")

METHODS = {}


def method(name):
    """Register the decorated function as the REST method ``name``."""

    def register(function):
        METHODS[name] = function
        return function

    return register


class Call:
    """The context of one REST call: the sandbox, the token and the user it belongs to."""

    def __init__(self, state, token):
        self.state = state
        self.token = token
        self.portal = state.get_portal(token.member_id)
        self.user = self.portal.users[token.user_id]


def rest_time(start):
    """Return the ``time`` block that every REST success carries."""
    finish = time.time()
    return {
        "start": round(start, 6),
        "finish": round(finish, 6),
        "duration": round(finish - start, 6),
        "processing": round(finish - start, 6),
        "date_start": iso_time(start),
        "date_finish": iso_time(finish),
        "operating_reset_at": int(start) + 600,
        "operating": 0,
    }


def error_response(error):
    """Return a :class:`ProtocolError` as the portal's JSON error answer."""
    return jsonify(error.as_json()), error.status


def upper_keys(params):
    """Return ``params`` with its top-level keys in upper case, as the portal reads them."""
    return {str(key).upper(): value for key, value in params.items()}


def read_params():
    """Return the call's parameters from its query string and its JSON or form body.

    :raise ProtocolError: ``INVALID_REQUEST`` when the query, form or JSON is malformed.
    """
    try:
        params = forms.parse_query(request.query_string.decode("utf-8", "replace"))
        if request.is_json:
            body = request.get_json(silent=True)
            if body is None and request.get_data():
                raise ProtocolError(400, "INVALID_REQUEST", "Request body is not valid JSON")
            if body is not None and not isinstance(body, dict):
                raise ProtocolError(400, "INVALID_REQUEST", "Request body must be a JSON object")
            params.update(body or {})
        else:
            params.update(forms.unflatten(request.form.items(multi=True)))
    except forms.FormError as error:
        raise ProtocolError(400, "INVALID_REQUEST", str(error)) from None
    return params


def authenticate(state, params):
    """Take ``auth`` (or ``access_token``) out of ``params`` and return the call's context.

    :raise ProtocolError: ``NO_AUTH_FOUND`` for a missing, unknown or revoked token,
        ``expired_token`` for an expired one.
    """
    access_token = params.pop("auth", None)
    alias = params.pop("access_token", None)
    access_token = access_token or alias
    token = state.find_token(access_token)
    if token is None:
        raise ProtocolError(401, "NO_AUTH_FOUND", "Wrong authorization data")
    if token.access_expires <= time.time():
        raise ProtocolError(401, "expired_token", "The access token provided has expired.")
    return Call(state, token)


def run_method(name, params, call):
    """Run REST method ``name`` and return its result.

    :raise ProtocolError: ``insufficient_scope`` for a method outside the app's scope,
        ``ERROR_METHOD_NOT_FOUND`` for one the portal does not have, or the method's own error.
    """
    function = METHODS.get(name)
    if function is not None:
        return function(params, call)
    granted = APP_SCOPE.split(",")
    for prefix, scope in SCOPED_PREFIXES.items():
        if name.startswith(prefix) and scope not in granted:
            raise ProtocolError(
                403,
                "insufficient_scope",
                "The request requires higher privileges than provided by the access token",
            )
    raise ProtocolError(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")


@bp.after_request
def allow_cross_origin(response):
    """Let the app's pages call the portal from their own origin, as a portal does."""
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["Access-Control-Allow-Methods"] = "POST, GET, OPTIONS"
    requested = request.headers.get("Access-Control-Request-Headers")
    response.headers["Access-Control-Allow-Headers"] = requested or "origin, content-type, accept"
    response.headers["Access-Control-Max-Age"] = "3600"
    return response


@bp.route("/<path:name>", methods=["GET", "POST", "OPTIONS"])
def call_method(name):
    """Answer one REST call (or its CORS preflight)."""
    if request.method == "OPTIONS":
        return "", 200

    start = time.time()
    name = faults.method_name(name)
    state = current_app.extensions["sandbox"]
    try:
        params = read_params()
        # The portal is known by the token, live or not: its requests count all the same.
        member_id = state.member_of_access_token(params.get("auth") or params.get("access_token"))
        if member_id is not None:
            refusal = faults.refusal(state, member_id, "rest", name)
            if refusal is not None:
                return refusal
            if not state.admit_rest_request(member_id):
                return faults.error_answer("rest", "QUERY_LIMIT_EXCEEDED")
        call = authenticate(state, params)
        result = run_method(name, params, call)
    except ProtocolError as error:
        return error_response(error)
    response = jsonify(result=result, time=rest_time(start))
    response.headers["X-Bitrix-Rest-Application"] = state.client_id
    return response


# Methods every app may call.


@method("server.time")
def server_time(params, call):
    """Return the portal's current time."""
    return iso_time(time.time())


@method("app.info")
def app_info(params, call):
    """Describe the app as installed on the calling portal."""
    return {
        "ID": call.portal.app_id,
        "CODE": call.state.client_id,
        "VERSION": APP_VERSION,
        "STATUS": APP_STATUS,
        "INSTALLED": call.portal.installed,
        "PAYMENT_EXPIRED": "N",
        "DAYS": None,
        "LANGUAGE_ID": LANGUAGE_ID,
        "LICENSE": "en_project",
        "LICENSE_PREVIOUS": "en_project",
        "LICENSE_TYPE": "project",
        "LICENSE_FAMILY": "project",
    }


@method("profile")
def profile(params, call):
    """Describe the user the token belongs to."""
    return {
        "ID": str(call.user.id),
        "ADMIN": call.user.admin,
        "NAME": call.user.name,
        "LAST_NAME": call.user.last_name,
        "PERSONAL_GENDER": call.user.gender,
        "PERSONAL_PHOTO": "",
        "TIME_ZONE": "",
        "TIME_ZONE_OFFSET": 0,
    }


@method("user.admin")
def user_admin(params, call):
    """Say whether the token's user may manage the app."""
    return call.user.admin


# Event handlers.


def _event_name(params):
    name = params.get("EVENT")
    name = name.strip().upper() if isinstance(name, str) else ""
    if name not in KNOWN_EVENTS:
        raise ProtocolError(400, "ERROR_EVENT_NOT_FOUND", "Event not found")
    return name


def _auth_type(params, call):
    raw = params.get("AUTH_TYPE")
    if raw is None or raw == "":
        return 0
    try:
        auth_type = int(raw)
    except (TypeError, ValueError):
        raise ProtocolError(400, "ERROR_ARGUMENT", "AUTH_TYPE must be a user id") from None
    if auth_type not in (0, call.user.id) and not call.user.admin:
        raise ProtocolError(403, "ACCESS_DENIED", "Access denied!")
    return auth_type


def check_handler_url(handler):
    """Return ``handler`` if a portal would accept it as an event handler URL.

    :raise ProtocolError: ``ERROR_UNSUPPORTED_PROTOCOL`` for a scheme other than http(s),
        ``ERROR_WRONG_HANDLER_URL`` for a URL without a dotted host.
    """
    if not isinstance(handler, str) or not handler.strip():
        raise ProtocolError(400, "ERROR_WRONG_HANDLER_URL", "Wrong handler URL")
    handler = handler.strip()
    parts = urlsplit(handler)
    if parts.scheme.lower() not in ("http", "https"):
        raise ProtocolError(400, "ERROR_UNSUPPORTED_PROTOCOL", "Unsupported protocol")
    try:
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        host = ""
    if "." not in host.strip("."):
        raise ProtocolError(400, "ERROR_WRONG_HANDLER_URL", "Wrong handler URL")
    return handler


@method("event.bind")
def event_bind(params, call):
    """Bind a handler URL to an event of the calling portal."""
    params = upper_keys(params)
    event = _event_name(params)
    handler = check_handler_url(params.get("HANDLER"))
    auth_type = _auth_type(params, call)
    event_type = str(params.get("EVENT_TYPE") or "online").lower()
    if event_type == "offline" and not call.user.admin:
        raise ProtocolError(403, "ACCESS_DENIED", "Access denied!")
    if event_type != "online":
        # Not handled yet: offline events (event.offline.*); the sandbox refuses to bind them.
        raise ProtocolError(400, "ERROR_ARGUMENT", "Only online events are supported")
    call.state.bind_event(call.portal.member_id, event, handler, auth_type, call.user.id)
    return True


@method("event.unbind")
def event_unbind(params, call):
    """Remove the matching handlers of an event and say how many went."""
    params = upper_keys(params)
    event = _event_name(params)
    handler = params.get("HANDLER")
    handler = handler.strip() if isinstance(handler, str) and handler.strip() else None
    auth_type = _auth_type(params, call) if params.get("AUTH_TYPE") not in (None, "") else None
    count = call.state.unbind_event(call.portal.member_id, event, handler, auth_type)
    return {"count": count}


@method("event.get")
def event_get(params, call):
    """List the handlers the app bound on the calling portal."""
    return [
        {
            "event": bound.event,
            "handler": bound.handler,
            "auth_type": str(bound.auth_type),
            "offline": 0,
        }
        for bound in call.state.bound_events(call.portal.member_id)
    ]


# Push & Pull.


@method("pull.application.config.get")
def pull_application_config_get(params, call):
    """Return the calling user's push configuration."""
    return call.state.pull_config(call.portal.member_id, call.user.id)


def _push_params(raw):
    if raw is None:
        return {}
    if isinstance(raw, str):
        try:
            raw = safejson.loads(raw)
        except ValueError:
            raw = None
    if not isinstance(raw, dict | list):
        raise ProtocolError(400, "PARAMS_ERROR", "Params format error")
    return raw


def _user_id_list(raw):
    """Return the user ids an admin addressed (0 meaning the shared channel)."""
    if raw is None or raw == "" or raw == 0:
        return []
    if isinstance(raw, str) and raw.strip().startswith("["):
        try:
            raw = safejson.loads(raw)
        except ValueError:
            raw = None
    items = list(raw.values()) if isinstance(raw, dict) else raw
    if not isinstance(items, list):
        items = [items]
    user_ids = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | str):
            raise ProtocolError(400, "USER_ID_ERROR", "User ID format error")
        text = str(item).strip()
        if not text.isdigit():
            raise ProtocolError(400, "USER_ID_ERROR", "User ID format error")
        user_ids.append(int(text))
    return user_ids


@method("pull.application.event.add")
def pull_application_event_add(params, call):
    """Queue a push message for the portal's shared channel or for some users' channels."""
    params = upper_keys(params)
    command = params.get("COMMAND")
    if isinstance(command, int | float) and not isinstance(command, bool):
        command = str(command)
    if not isinstance(command, str) or not COMMAND_PATTERN.match(command):
        raise ProtocolError(400, "COMMAND_ERROR", "Command format error")
    push_params = _push_params(params.get("PARAMS"))
    module_id = params.get("MODULE_ID", "application")
    if module_id is None:
        module_id = "application"
    if not isinstance(module_id, str) or not MODULE_ID_PATTERN.match(module_id):
        raise ProtocolError(400, "MODULE_ID_ERROR", "Module ID format error")

    raw_user_id = params.get("USER_ID")
    if call.user.admin:
        user_ids = _user_id_list(raw_user_id)
    elif raw_user_id is None:
        user_ids = []
    elif raw_user_id == str(call.user.id):
        # A portal compares a non-admin's USER_ID with the user's id as a string, strictly.
        user_ids = [call.user.id]
    else:
        raise ProtocolError(
            400,
            "USER_ID_ACCESS_ERROR",
            "Only admin can send notifications to other channels",
        )

    call.state.push(call.portal.member_id, user_ids, module_id, command, push_params)
    return True


# Batch.


def _batch_value(results, key, path):
    value = results.get(key)
    for part in re.findall(r"\[([^\]]*)\]", path):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return ""
    if isinstance(value, bool):
        return "1" if value else ""
    if value is None or isinstance(value, dict | list):
        return ""
    return str(value)


def _php_array(items):
    """Return ``items`` the way PHP's json_encode writes an array: a list when 0..n-1 keyed."""
    if not items:
        return []
    if list(items) == [str(index) for index in range(len(items))]:
        return list(items.values())
    return items


def _halts(raw):
    if isinstance(raw, str):
        return raw.strip().lower() not in ("", "0", "false", "n")
    return bool(raw)


@method("batch")
def batch(params, call):
    """Run up to 50 commands with the caller's token and collect their results and errors."""
    params = upper_keys(params)
    commands = params.get("CMD") or {}
    if isinstance(commands, list):
        commands = {str(index): command for index, command in enumerate(commands)}
    if not isinstance(commands, dict):
        commands = {}
    if len(commands) > BATCH_LIMIT:
        raise ProtocolError(400, "ERROR_BATCH_LENGTH_EXCEEDED", "Max batch length exceeded")
    halt = _halts(params.get("HALT", 0))

    results, errors, timings = {}, {}, {}
    for key, command in commands.items():
        key = str(key)
        start = time.time()
        try:
            if not isinstance(command, str) or not command.strip():
                raise ProtocolError(400, "ERROR_ARGUMENT", "Batch command is empty")
            name, _, query = command.strip().partition("?")
            name = name.lower().removesuffix(".json")
            if name == "batch":
                raise ProtocolError(
                    405, "ERROR_BATCH_METHOD_NOT_ALLOWED", "Method is not allowed for batch usage"
                )
            query = BATCH_REFERENCE.sub(
                lambda match: quote(_batch_value(results, match.group(1), match.group(2))),
                query,
            )
            try:
                sub_params = forms.parse_query(query)
            except forms.FormError as error:
                raise ProtocolError(400, "INVALID_REQUEST", str(error)) from None
            # A sub-command runs with the batch's own token, never one of its own.
            sub_params.pop("auth", None)
            sub_params.pop("access_token", None)
            results[key] = run_method(name, sub_params, call)
        except ProtocolError as error:
            errors[key] = error.as_json()
            if halt:
                break
        finally:
            timings[key] = rest_time(start)

    return {
        "result": _php_array(results),
        "result_error": _php_array(errors),
        "result_total": [],
        "result_next": [],
        "result_time": _php_array(timings),
    }
