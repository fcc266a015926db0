"""Faults: the sandbox answers the way a failing portal or OAuth server does, when told to.

A test (or a developer, over HTTP: see ``portal.py``) arranges a :class:`Fault` for one portal
with :meth:`~b24app.sandbox.state.SandboxState.add_fault`; the next matching requests to the
portal's REST API (target ``rest``) or to the OAuth server (target ``oauth``) get the fault's
answer instead of the normal one. Each kind is answered as the real server answers it: the
HTTP status and the ``{"error", "error_description"}`` body of the tables below. Where sources
disagree on a status (``PORTAL_DELETED``, ``invalid_client``, ``OVERLOAD_LIMIT``), a client
must branch on the code; the statuses here follow the protocol reference.

Kinds that are no protocol error, for both targets:

- ``html_error``: 502 with an HTML page, as a proxy in front of the server answers;
- ``empty_error``: 500 with an empty body;
- ``slow``: ``delay`` seconds of silence, then the normal answer (the request is still
  carried out, so a refresh that the client gave up on has used the refresh token up);
- ``drop_connection``: the socket is closed without any HTTP answer.

And for ``rest`` only ``redirect``: 302 with ``Location``, as the old address of a renamed
portal answers. Every kind waits ``delay`` seconds first when one is given.

The target ``events`` is the portal's own delivery of REST events to the handlers the app bound
(``method``: one event name, such as ``ONAPPUNINSTALL``, or None for every event). A portal
posts each event once, without retries, but late under load and, now and then, twice; and
anyone can post to a handler URL. Its kinds are:

- ``duplicate``: the event is posted twice, the second copy once the first is answered;
- ``late``: the event is posted ``delay`` seconds late;
- ``wrong_token``: the event carries an ``application_token`` that is not the portal's, as a
  forged one would;
- ``lost``: the event is never posted.
"""

import logging
import socket
import time
from contextlib import suppress
from dataclasses import asdict, dataclass

from flask import jsonify, make_response, request

log = logging.getLogger(__name__)

TARGETS = ("oauth", "rest", "events")

# The OAuth server's refusals of a refresh (/oauth/token/).
OAUTH_ERRORS = {
    "invalid_grant": (400, "invalid_grant", "Invalid grant"),
    "invalid_client": (401, "invalid_client", "Invalid client credentials"),
    # This one comes with HTTP 200: only the body tells it from a success.
    "wrong_client": (200, "wrong_client", "Wrong client"),
    # No source gives this one's status; 401 as the portal's own PAYMENT_REQUIRED.
    "PAYMENT_REQUIRED": (401, "PAYMENT_REQUIRED", "Subscription has been ended"),
    "NOT_INSTALLED": (401, "NOT_INSTALLED", "Application not installed"),
    "NO_AUTH_FOUND": (401, "NO_AUTH_FOUND", "Wrong authorization data"),
    # The OAuth server knows no deleted portal and answers 404 for it.
    "PORTAL_DELETED": (404, "PORTAL_DELETED", "Portal was deleted"),
}

# The portal's REST API's refusals that can come from any method.
REST_ERRORS = {
    "QUERY_LIMIT_EXCEEDED": (503, "QUERY_LIMIT_EXCEEDED", "Too many requests"),
    "OPERATION_TIME_LIMIT": (
        429,
        "OPERATION_TIME_LIMIT",
        "Method is blocked due to operation time limit.",
    ),
    "INTERNAL_SERVER_ERROR": (500, "INTERNAL_SERVER_ERROR", "Internal server error"),
    # The docs say 500 and one SDK 410; the core throws it with 403.
    "PORTAL_DELETED": (403, "PORTAL_DELETED", "Portal was deleted"),
    "PAYMENT_REQUIRED": (401, "PAYMENT_REQUIRED", "Subscription has been ended"),
    # A portal says an app is gone in two ways; NOT_INSTALLED is the OAuth server's word.
    "APPLICATION_NOT_FOUND": (401, "APPLICATION_NOT_FOUND", "Application not found"),
    "ERROR_OAUTH": (401, "ERROR_OAUTH", "Application not installed"),
    "NO_AUTH_FOUND": (401, "NO_AUTH_FOUND", "Wrong authorization data"),
    # The newest docs list this one with 401.
    "OVERLOAD_LIMIT": (503, "OVERLOAD_LIMIT", "REST API is blocked due to overload"),
}

TRANSPORT_KINDS = ("html_error", "empty_error", "slow", "drop_connection")
EVENT_KINDS = ("duplicate", "late", "wrong_token", "lost")
KINDS = {
    "oauth": (*OAUTH_ERRORS, *TRANSPORT_KINDS),
    "rest": (*REST_ERRORS, *TRANSPORT_KINDS, "redirect"),
    "events": EVENT_KINDS,
}
# The kinds that mean nothing without a delay.
DELAYED_KINDS = ("slow", "late")
# What the OAuth server serves besides the token endpoint, which is the target's default.
OAUTH_METHODS = ("app.info",)
# A delay longer than any client's timeout only ties up a server thread.
MAX_DELAY = 300

BAD_GATEWAY_PAGE = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n"
    "<body>\r\n<h1>502 Bad Gateway</h1>\r\n<hr>nginx\r\n</body>\r\n</html>\r\n"
)


@dataclass
class Fault:
    """A failure arranged for one portal's next requests to one target.

    ``times`` is how many more requests it answers (None: until cleared); ``method`` limits it
    to one REST method (a ``batch`` is matched as ``batch``), for ``oauth`` to the OAuth
    server's ``app.info`` instead of its token endpoint, and for ``events`` to one event.
    """

    id: int
    member_id: str
    target: str
    kind: str
    times: int | None = 1
    method: str | None = None
    delay: float | None = None

    def as_json(self):
        """Return the fault as the control endpoints list it."""
        return asdict(self)

    def matches(self, target, method):
        """Say whether a request to ``target`` calling ``method`` gets this fault."""
        if self.target != target:
            return False
        if target == "oauth":
            return self.method == method
        return self.method is None or self.method == method


def method_name(name, target="rest"):
    """Return a REST method name as the portal reads it: lower case, without ``.json``.

    For the target ``events`` the name is an event's, which a portal writes in upper case.
    """
    if target == "events":
        return name.upper()
    return name.lower().removesuffix(".json")


def error_answer(target, kind):
    """Return the server's JSON refusal ``kind`` of ``target`` as a Flask response."""
    status, error, description = (OAUTH_ERRORS if target == "oauth" else REST_ERRORS)[kind]
    response = jsonify(error=error, error_description=description)
    response.status_code = status
    return response


def answer(fault):
    """Answer the current request as ``fault`` says, or return None to answer it normally.

    ``slow`` returns None after its delay; every other kind returns the Flask response.
    """
    log.info(
        "Portal %s: %s %s answered with the fault %s",
        fault.member_id,
        fault.target,
        fault.method or ("token" if fault.target == "oauth" else "call"),
        fault.kind,
    )
    if fault.delay:
        time.sleep(fault.delay)
    if fault.kind == "slow":
        return None
    if fault.kind == "drop_connection":
        return drop_connection(fault)
    if fault.kind == "html_error":
        return make_response(BAD_GATEWAY_PAGE, 502, {"Content-Type": "text/html"})
    if fault.kind == "empty_error":
        return make_response("", 500, {"Content-Type": "text/html"})
    if fault.kind == "redirect":
        # The portal's new address is the sandbox's own, so the repeated call succeeds there.
        return make_response("", 302, {"Location": request.url, "Content-Type": "text/html"})
    return error_answer(fault.target, fault.kind)


def drop_connection(fault):
    """Close the request's socket without answering, and return what the server may write.

    werkzeug's dev server and gunicorn put the client's socket in the WSGI environ; after a
    shutdown the server's write fails and it treats the request as a dropped connection.
    """
    connection = request.environ.get("werkzeug.socket") or request.environ.get("gunicorn.socket")
    if connection is None:
        log.warning(
            "Portal %s: this server cannot drop a connection; answering an empty 500 instead",
            fault.member_id,
        )
        return make_response("", 500, {"Content-Type": "text/html"})
    # The client may have gone away first; then there is nothing left to drop.
    with suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)
    return make_response("", 500, {"Content-Type": "text/html"})


def refusal(state, member_id, target, method=None):
    """Return the answer the portal's faults or its condition give a request, or None.

    :param state: the :class:`~b24app.sandbox.state.SandboxState`.
    :param method: the REST method called, or for ``oauth`` None (the token endpoint) or
        ``app.info``, which a portal's condition leaves alone.
    """
    fault = state.take_fault(member_id, target, method)
    if fault is not None:
        response = answer(fault)
        if response is not None:
            return response
    if target == "oauth" and method is not None:
        return None
    condition = state.condition_fault(member_id, target)
    return answer(condition) if condition is not None else None
