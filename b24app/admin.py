"""The admin page: the event log and each portal's state, for portal admins and the operator.

A portal's administrators open it inside the portal frame; the frame handshake (in
:mod:`~b24app.pages`) proves who they are and asks the portal itself (``user.admin``) whether
they administer it. They get an admin token scoped to their portal. The backend's operator opens
it directly with a link that ``flask --app wsgi admin-link`` prints, holding a token scoped to
every portal. Either token is signed with the app's secret key and carries its own expiry; the
page sends it as ``Authorization: Bearer`` and as the live tail's first WebSocket message.
"""

import csv
import io
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import wraps
from urllib.parse import urlencode, urlsplit

from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    jsonify,
    render_template,
    request,
    stream_with_context,
)
from flask_sock import Sock
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from simple_websocket import ConnectionClosed
from werkzeug.datastructures import MultiDict

from b24app import eventlog, safejson
from b24app.eventlog import Kind, Outcome, queries, summary
from b24app.eventlog.queries import FilterError

log = logging.getLogger(__name__)

bp = Blueprint("admin", __name__, url_prefix="/admin")
sock = Sock()

_SALT = "b24app.admin-token"
PORTAL_SCOPE = "portal"
OPERATOR_SCOPE = "operator"
# The longest an operator link may live; itsdangerous refuses older signatures outright.
MAX_OPERATOR_HOURS = 30 * 24

# WebSocket close codes of the live tail (4000–4999 are the application's own).
CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_INTERNAL_ERROR = 1011
TAIL_POLL_INTERVAL = 0.5
TAIL_AUTH_TIMEOUT = 10.0
TAIL_BATCH = 200
# A moment for the client to read the close frame before the connection goes.
CLOSE_GRACE = 0.3

EXPORT_COLUMNS = (
    "id",
    "occurred_at",
    "member_id",
    "domain",
    "kind",
    "outcome",
    "message",
    "duration_ms",
    "details",
)
# Spreadsheets run a cell that starts with one of these as a formula.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")

ADMINS_ONLY_MESSAGE = (
    "The event log is for the portal's administrators only. Ask an administrator of this "
    "portal if you need to know how the app is doing."
)


class AccessRefused(Exception):
    """An admin token is missing, forged or expired (401) or does not cover a portal (403)."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class AdminGrant:
    """What an admin token allows: one portal's rows (``member_id``) or every portal's."""

    scope: str
    member_id: str | None
    user_id: int | None
    expires_at: float

    @property
    def operator(self):
        """Return whether the grant covers every portal."""
        return self.scope == OPERATOR_SCOPE

    def seconds_left(self):
        """Return how long the grant still holds, in seconds (negative once expired)."""
        return self.expires_at - time.time()

    def restrict(self, event_filter):
        """Return ``event_filter`` limited to what the grant may see.

        :raise AccessRefused: (403) when a portal admin asks for another portal's rows.
        """
        if self.operator:
            return event_filter
        if event_filter.member_id not in (None, self.member_id):
            raise AccessRefused(403, "This admin token shows its own portal's events only.")
        return event_filter.restricted_to(self.member_id)


def _serializer():
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=_SALT)


def issue_admin_token(member_id, user_id, max_age=None):
    """Return a token that shows the admin page of ``member_id`` to its admin ``user_id``."""
    max_age = current_app.config["ADMIN_TOKEN_MAX_AGE"] if max_age is None else max_age
    return _serializer().dumps(
        {
            "scope": PORTAL_SCOPE,
            "member_id": member_id,
            "user_id": user_id,
            "exp": time.time() + max_age,
        }
    )


def issue_operator_token(hours):
    """Return a token that shows every portal's events for ``hours`` hours."""
    if not 0 < hours <= MAX_OPERATOR_HOURS:
        raise ValueError(f"An operator link lives from a moment to {MAX_OPERATOR_HOURS} hours.")
    return _serializer().dumps({"scope": OPERATOR_SCOPE, "exp": time.time() + hours * 3600})


def operator_link(hours):
    """Return the operator's link to the admin page, valid for ``hours`` hours."""
    token = issue_operator_token(hours)
    return current_app.config["PUBLIC_URL"] + "/admin/operator?" + urlencode({"token": token})


def read_admin_token(token):
    """Return the :class:`AdminGrant` in an admin token.

    :raise AccessRefused: (401) with a message fit for the client when the token is forged or
        expired.
    """
    try:
        data = _serializer().loads(token, max_age=MAX_OPERATOR_HOURS * 3600)
    except SignatureExpired:
        raise AccessRefused(401, "The admin token has expired; reopen the admin page.") from None
    except BadSignature:
        raise AccessRefused(401, "The admin token is not valid; reopen the admin page.") from None
    if not isinstance(data, dict) or data.get("scope") not in (PORTAL_SCOPE, OPERATOR_SCOPE):
        raise AccessRefused(401, "The admin token is not valid; reopen the admin page.")
    grant = AdminGrant(
        scope=data["scope"],
        member_id=data.get("member_id"),
        user_id=data.get("user_id"),
        expires_at=float(data.get("exp", 0)),
    )
    if grant.scope == PORTAL_SCOPE and not grant.member_id:
        raise AccessRefused(401, "The admin token is not valid; reopen the admin page.")
    if grant.seconds_left() <= 0:
        raise AccessRefused(401, "The admin token has expired; reopen the admin page.")
    return grant


def admin_token_required(view):
    """Answer 401 unless the request carries a valid admin token; set ``g.grant``."""

    @wraps(view)
    def wrapped(*args, **kwargs):
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return jsonify(error="An admin token is required (Authorization: Bearer …)."), 401
        try:
            g.grant = read_admin_token(token.strip())
        except AccessRefused as exc:
            return jsonify(error=exc.message), exc.status
        return view(*args, **kwargs)

    return wrapped


@bp.errorhandler(FilterError)
def bad_filter(error):
    """Answer a malformed query parameter with 400 and what is wrong with it."""
    return jsonify(error=str(error)), 400


@bp.errorhandler(AccessRefused)
def access_refused(error):
    """Answer a refused scope in the API's JSON shape."""
    return jsonify(error=error.message), error.status


# The pages.


def frame_page(frame, portal, user_id, is_admin):
    """Show the admin page in the portal's frame to an administrator, and refuse anyone else.

    :param frame: the verified :class:`~b24app.bitrix.frame.FrameRequest`.
    :param portal: the stored :class:`~b24app.models.Portal`.
    :param is_admin: the portal's own answer to ``user.admin`` for the frame's user.
    """
    if not is_admin:
        eventlog.record(
            Kind.ADMIN_OPEN,
            Outcome.REFUSED,
            f"User {user_id} is not an administrator",
            member_id=portal.member_id,
            domain=portal.domain,
            details={"user_id": user_id, "placement": frame.placement},
        )
        response = current_app.make_response(
            (render_template("admin_only.html", message=ADMINS_ONLY_MESSAGE, portal=portal), 403)
        )
        return _secured(response, f"frame-ancestors {frame.portal_origin}")

    eventlog.record(
        Kind.ADMIN_OPEN,
        Outcome.OK,
        f"Admin page opened by user {user_id}",
        member_id=portal.member_id,
        domain=portal.domain,
        details={"user_id": user_id, "placement": frame.placement},
    )
    token = issue_admin_token(portal.member_id, user_id)
    response = _admin_page(read_admin_token(token), token, portal=portal)
    return _secured(response, f"frame-ancestors {frame.portal_origin}")


@bp.get("/operator")
def operator_page():
    """Show every portal's events to the operator holding a link from ``admin-link``."""
    token = request.args.get("token", "").strip()
    try:
        grant = read_admin_token(token)
        if not grant.operator:
            raise AccessRefused(403, "This link is not an operator link.")
    except AccessRefused as exc:
        message = exc.message
        if exc.status == 401:
            message = message.replace(
                "reopen the admin page", "print a new link with flask --app wsgi admin-link"
            )
        response = current_app.make_response(
            (render_template("error.html", message=message), exc.status)
        )
        return _secured(response, "frame-ancestors 'none'")
    return _secured(_admin_page(grant, token), "frame-ancestors 'none'")


def _admin_page(grant, token, portal=None):
    config = current_app.config
    public = urlsplit(config["PUBLIC_URL"])
    socket_scheme = "wss" if public.scheme == "https" else "ws"
    page_config = {
        "mode": "admin",
        "scope": grant.scope,
        "memberId": grant.member_id,
        "token": token,
        "expiresAt": datetime.fromtimestamp(grant.expires_at, UTC).isoformat(),
        "apiUrl": config["PUBLIC_URL"] + "/admin/api",
        "tailUrl": f"{socket_scheme}://{public.netloc}/admin/api/tail",
        "kinds": list(eventlog.KINDS),
        "outcomes": list(eventlog.OUTCOMES),
        "retentionDays": config["EVENT_LOG_RETENTION_DAYS"],
    }
    return current_app.make_response(
        render_template("admin.html", page_config=page_config, portal=portal, grant=grant)
    )


def _secured(response, frame_ancestors):
    """Give an admin page its CSP (own scripts only, no inline ones) and keep it out of caches."""
    public = urlsplit(current_app.config["PUBLIC_URL"])
    socket_origin = f"{'wss' if public.scheme == 'https' else 'ws'}://{public.netloc}"
    response.headers["Content-Security-Policy"] = "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            f"connect-src 'self' {socket_origin}",
            "img-src 'self' data:",
            "style-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            frame_ancestors,
        ]
    )
    response.headers["Cache-Control"] = "no-store"
    # The operator page's address holds its token.
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


# The API the page calls.


def _filter_from(args):
    return g.grant.restrict(queries.parse_filter(args))


@bp.get("/api/summary")
@admin_token_required
def api_summary():
    """Show each portal's state and its pings of the last hour (one portal for its admins)."""
    portals = summary.portal_summaries(None if g.grant.operator else g.grant.member_id)
    recorder = eventlog.recorder()
    return jsonify(
        portals=portals,
        scope=g.grant.scope,
        log={"dropped": recorder.dropped, "failed": recorder.failed},
    )


@bp.get("/api/events")
@admin_token_required
def api_events():
    """Show one page of the log, newest first; ``next`` is the cursor of the page after it."""
    event_filter = _filter_from(request.args)
    limit = queries.parse_limit(request.args.get("limit"))
    rows, next_cursor = queries.query_page(
        event_filter, limit=limit, before=request.args.get("before") or None
    )
    return jsonify(
        rows=[queries.row_as_json(row) for row in rows],
        next=next_cursor,
        filter=event_filter.as_json(),
    )


@bp.get("/api/export")
@admin_token_required
def api_export():
    """Download every row the filters match, newest first, as CSV or JSON."""
    export_format = request.args.get("format", "csv")
    if export_format not in ("csv", "json"):
        raise FilterError("format must be csv or json.")
    event_filter = _filter_from(request.args)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    rows = queries.iterate_rows(event_filter)
    if export_format == "csv":
        body, mimetype = _csv_lines(rows), "text/csv"
    else:
        body, mimetype = _json_chunks(rows), "application/json"
    response = Response(stream_with_context(body), mimetype=mimetype)
    response.headers["Content-Disposition"] = (
        f'attachment; filename="event-log-{stamp}.{export_format}"'
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def safe_cell(value):
    """Return ``value`` as a CSV cell that no spreadsheet runs as a formula."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    if isinstance(value, str) and text.startswith(FORMULA_PREFIXES):
        return "'" + text
    return text


def _csv_lines(rows):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_COLUMNS)
    for row in rows:
        writer.writerow(
            [
                safe_cell(value)
                for value in (
                    row.id,
                    row.occurred_at.isoformat(),
                    row.member_id,
                    row.domain,
                    row.kind,
                    row.outcome,
                    row.message,
                    row.duration_ms,
                    row.details,
                )
            ]
        )
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _json_chunks(rows):
    yield "["
    for index, row in enumerate(rows):
        item = queries.row_as_json(row)
        del item["cursor"]
        yield ("," if index else "") + "\n" + json.dumps(item, ensure_ascii=False)
    yield "\n]\n"


@sock.route("/api/tail", bp=bp)
def api_tail(ws):
    """Send new log rows to the page as they are written, until the token expires.

    The first message must be ``{"token": …, "filter": {…}, "after": <id> | null}``: browsers
    cannot put an Authorization header on a WebSocket, and a token in the URL would end up in
    access logs. The socket polls the database, so it sees rows from every process.
    """
    try:
        grant, event_filter, last_id = _open_tail(ws)
    except AccessRefused as exc:
        code = {401: CLOSE_UNAUTHORIZED, 403: CLOSE_FORBIDDEN}.get(exc.status, CLOSE_BAD_REQUEST)
        _close(ws, code, exc.message)
        return
    except FilterError as exc:
        _close(ws, CLOSE_BAD_REQUEST, str(exc))
        return

    ws.send(json.dumps({"type": "ready", "after": last_id, "expires_at": grant.expires_at}))
    try:
        _follow(ws, grant, event_filter, last_id)
    except ConnectionClosed:
        raise
    except Exception:
        log.exception("Live tail failed")
        _close(ws, CLOSE_INTERNAL_ERROR, "The live tail failed; reload the page.")


def _follow(ws, grant, event_filter, last_id):
    """Send rows after ``last_id`` every poll interval until the grant expires."""
    # Not handled yet: with writers in several processes on PostgreSQL, a row may commit after
    # one with a higher id; the tail then skips it (reloading the page shows it).
    while True:
        if grant.seconds_left() <= 0:
            _close(ws, CLOSE_UNAUTHORIZED, "The admin token has expired; reopen the admin page.")
            return
        rows = queries.rows_after(event_filter, last_id, limit=TAIL_BATCH)
        if rows:
            last_id = rows[-1].id
            ws.send(json.dumps({"type": "rows", "rows": [queries.row_as_json(r) for r in rows]}))
        # Waiting on the socket also notices a client that went away (ConnectionClosed).
        ws.receive(timeout=min(TAIL_POLL_INTERVAL, max(0.01, grant.seconds_left())))


def _open_tail(ws):
    """Read the tail's first message; return its grant, its filter and the id to start after."""
    raw = ws.receive(timeout=TAIL_AUTH_TIMEOUT)
    if raw is None:
        raise AccessRefused(401, "Send the admin token first.")
    try:
        opening = safejson.loads(raw)
    except (TypeError, ValueError):
        raise FilterError("The first message must be a JSON object.") from None
    if not isinstance(opening, dict) or not isinstance(opening.get("token"), str):
        raise AccessRefused(401, "Send the admin token first.")
    grant = read_admin_token(opening["token"])
    filter_args = opening.get("filter") or {}
    if not isinstance(filter_args, dict):
        raise FilterError("filter must be an object of the page's query parameters.")
    event_filter = grant.restrict(queries.parse_filter(MultiDict(_filter_pairs(filter_args))))
    after = opening.get("after")
    if after is None:
        return grant, event_filter, queries.newest_id()
    if (
        isinstance(after, bool)
        or not isinstance(after, int)
        or not 0 <= after <= queries.MAX_ROW_ID
    ):
        raise FilterError("after must be the id of a row, or null for rows from now on.")
    return grant, event_filter, after


def _filter_pairs(filter_args):
    for key, value in filter_args.items():
        for item in value if isinstance(value, list) else [value]:
            if item is not None:
                yield str(key), str(item)


def _close(ws, code, message):
    try:
        ws.close(reason=code, message=message)
        # Closing the TCP connection at once can reset it before the client reads the close
        # frame; give it a moment.
        time.sleep(CLOSE_GRACE)
    except ConnectionClosed:
        pass


def init_app(app):
    """Register the admin page, its API and its live tail."""
    app.register_blueprint(bp)
