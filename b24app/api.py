"""Calls from the app page back to the backend, authenticated by the page's signed token.

Inside the portal's iframe the app's cookies are third-party and browsers drop them, so the
page carries a short-lived token signed with the app's secret key instead, sent back as
``Authorization: Bearer <token>``.
"""

import time
from datetime import UTC, datetime
from functools import wraps

from flask import Blueprint, current_app, g, jsonify, request
from itsdangerous import BadSignature, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer

from b24app import eventlog, store
from b24app.models import AccessProblem, utcnow

bp = Blueprint("api", __name__, url_prefix="/api")

_SALT = "b24app.page-token"
_RECEIPT_SALT = "b24app.ping-receipt"
# A page may receive a ping the push server held back; older ones are not plausible.
MAX_DELIVERY_AGE = 3600.0


def _serializer():
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=_SALT)


def issue_page_token(member_id, user_id):
    """Return a signed token that lets the page act for ``member_id`` and ``user_id``."""
    return _serializer().dumps({"member_id": member_id, "user_id": user_id})


def read_page_token(token):
    """Return the ``(member_id, user_id)`` in a page token.

    :raise ValueError: with a message fit for the client when the token is forged or expired.
    """
    try:
        data = _serializer().loads(token, max_age=current_app.config["PAGE_TOKEN_MAX_AGE"])
    except SignatureExpired:
        raise ValueError("The page token has expired; reopen the app.") from None
    except BadSignature:
        raise ValueError("The page token is not valid; reopen the app.") from None
    return data["member_id"], data.get("user_id")


def page_token_required(view):
    """Answer 401 unless the request carries a valid page token; set ``g.member_id``."""

    @wraps(view)
    def wrapped(*args, **kwargs):
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return jsonify(error="A page token is required (Authorization: Bearer …)."), 401
        try:
            g.member_id, g.user_id = read_page_token(token.strip())
        except ValueError as exc:
            return jsonify(error=str(exc)), 401
        return view(*args, **kwargs)

    return wrapped


@bp.get("/status")
@page_token_required
def status():
    """Show the backend's view of the page's portal."""
    portal = store.get_portal(g.member_id)
    if portal is None:
        return jsonify(error="This portal is not known to the app."), 404
    return jsonify(
        member_id=portal.member_id,
        domain=portal.domain,
        install_state=portal.install_state,
        ping_sequence=portal.ping_sequence,
        last_ping_at=portal.last_ping_at.isoformat() if portal.last_ping_at else None,
        access=describe_access(portal),
        module_id=current_app.config["PULL_MODULE_ID"],
        ping_interval=current_app.config["PING_INTERVAL"],
    )


def _receipts():
    return URLSafeSerializer(current_app.config["SECRET_KEY"], salt=_RECEIPT_SALT)


def issue_ping_receipt(member_id, sequence, sent_at):
    """Return the signed receipt that a ping carries and the page sends back to acknowledge it.

    It binds the ping's portal, number and send time: a page can acknowledge only pings the
    scheduler sent to its own portal, and cannot make their delay look shorter. (Holding one
    back makes it look longer, up to the hour a receipt is taken.)
    """
    return _receipts().dumps([member_id, sequence, sent_at])


@bp.post("/ping-delivered")
@page_token_required
def ping_delivered():
    """Record that the page received a scheduler ping, and its delay from the scheduler.

    The body is ``{"receipt": "<the ping's receipt>"}`` (see :func:`issue_ping_receipt`). The
    delay is the backend's clock now minus the ping's send time (the scheduler's clock): the
    page's own clock may be off by minutes, while the backend's hosts keep theirs in step. It
    includes the acknowledgement's own trip, a few milliseconds.
    """
    body = request.get_json(silent=True)
    if (
        not isinstance(body, dict)
        or set(body) != {"receipt"}
        or not isinstance(body["receipt"], str)
    ):
        return jsonify(error="Send a JSON object with the ping's receipt only."), 400
    try:
        member_id, sequence, sent_at = _receipts().loads(body["receipt"])
    except BadSignature:
        return jsonify(error="receipt is not one that the app's scheduler issued."), 400
    if member_id != g.member_id:
        return jsonify(error="receipt is of a ping sent to another portal."), 403
    now = time.time()
    if sent_at < now - MAX_DELIVERY_AGE:
        return jsonify(error="receipt is of a ping sent more than an hour ago."), 400
    portal = store.get_portal(g.member_id)
    if portal is None:
        return jsonify(error="This portal is not known to the app."), 404
    # Numbers start again when the app is installed anew after its data was deleted.
    if sent_at < portal.created_at.timestamp():
        return jsonify(error="receipt is of a ping to an earlier installation of the app."), 400
    if not store.acknowledge_ping(
        g.member_id,
        sequence,
        g.user_id,
        datetime.fromtimestamp(sent_at, UTC),
        kept_since=datetime.fromtimestamp(now - MAX_DELIVERY_AGE, UTC),
    ):
        return jsonify(error="This ping was acknowledged already."), 409
    delay_ms = max(0.0, (now - sent_at) * 1000)
    eventlog.record_ping_delivered(g.member_id, sequence, sent_at, delay_ms, g.user_id)
    return jsonify(result="ok", delay_ms=round(delay_ms, 1))


ACCESS_PROBLEM_TEXT = {
    AccessProblem.NEEDS_REAUTH: "needs re-authorization",
    AccessProblem.PAYMENT_REQUIRED: "payment required",
    AccessProblem.PORTAL_DELETED: "portal deleted",
    AccessProblem.NOT_INSTALLED: "app not installed",
    AccessProblem.MOVED: "portal moved",
}


def describe_access(portal):
    """Return in a few words whether the app can call the portal, and if not, why."""
    if portal.access_problem:
        text = ACCESS_PROBLEM_TEXT.get(portal.access_problem, portal.access_problem)
        return f"{text} ({portal.access_problem_detail})"
    if portal.backoff_until and portal.backoff_until > utcnow():
        return f"backing off until {portal.backoff_until:%H:%M:%S} UTC"
    return "working"
