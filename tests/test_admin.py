"""The admin page over HTTP and WebSocket: who sees what, filters, paging, export, live tail."""

import csv
import io
import json
import re
import time
from urllib.parse import urlsplit

import pytest
import requests
from itsdangerous import URLSafeSerializer, URLSafeTimedSerializer
from simple_websocket import Client, ConnectionClosed
from sqlalchemy import select, update

from b24app import eventlog
from b24app.admin import issue_admin_token, issue_operator_token
from b24app.api import issue_page_token, issue_ping_receipt
from b24app.db import reading, transaction
from b24app.eventlog import Kind, Outcome
from b24app.models import EventLogEntry, Portal
from b24app.scheduler import send_ping
from tests.conftest import frame_post, install_portal
from tests.test_events import bind_lifecycle_events, install_with_handlers

ADMIN, USER = 1, 2
PAGE_CONFIG = re.compile(r'<script type="application/json" id="page-config">(.*?)</script>', re.S)


def page_config(html):
    match = PAGE_CONFIG.search(html)
    return json.loads(match.group(1)) if match else None


def open_admin_page(server, member_id, user_id=ADMIN, path=None):
    """Open the app with view=admin as the portal's slider does; return the response."""
    launch = server.sandbox.frame_launch(
        member_id, user_id=user_id, placement_options={"view": "admin"}
    )
    if path:
        launch.url = launch.url.replace("/app?", f"{path}?")
    return frame_post(launch)


def admin_token(server, member_id):
    response = open_admin_page(server, member_id)
    assert response.status_code == 200, response.text
    return page_config(response.text)["token"]


def api(server, path, token, **params):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.get(
        f"{server.public_url}/admin/api{path}", params=params, headers=headers, timeout=10
    )


def record(server, *rows):
    """Record rows through the recorder and wait until they are written."""
    with server.app.app_context():
        for kind, outcome, message, member_id in rows:
            eventlog.record(kind, outcome, message, member_id=member_id)
        assert eventlog.flush()


def rows_in_log(server, **where):
    """Return the log's rows that match ``where``, once everything queued is written."""
    flush(server)
    with server.app.app_context(), reading() as session:
        statement = select(EventLogEntry).order_by(EventLogEntry.id)
        for name, value in where.items():
            statement = statement.where(getattr(EventLogEntry, name) == value)
        return list(session.scalars(statement))


def flush(server):
    with server.app.app_context():
        assert eventlog.flush()


@pytest.fixture
def two_portals(live_server):
    first, second = install_portal(live_server), install_portal(live_server)
    record(
        live_server,
        (Kind.PING_SEND, Outcome.OK, "first portal's ping", first.member_id),
        (Kind.PING_SEND, Outcome.FAILED, "second portal's failure", second.member_id),
        (Kind.SCHEDULER_START, Outcome.OK, "backend row", None),
    )
    return first, second


# Who may see what.


@pytest.mark.parametrize("path", [None, "/admin"])
def test_a_portal_admin_gets_the_admin_page_with_a_token_for_that_portal(live_server, path):
    portal = install_portal(live_server)

    response = open_admin_page(live_server, portal.member_id, path=path)

    assert response.status_code == 200
    config = page_config(response.text)
    assert config["mode"] == "admin"
    assert config["scope"] == "portal"
    assert config["memberId"] == portal.member_id
    assert config["tailUrl"] == f"ws://127.0.0.1:{live_server.port}/admin/api/tail"
    policy = response.headers["Content-Security-Policy"]
    assert f"frame-ancestors {live_server.sandbox_url}" in policy
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    # Every script is a file or inert JSON: nothing a strict CSP would block.
    for tag in re.findall(r"<script[^>]*>", response.text):
        assert "src=" in tag or 'type="application/json"' in tag, tag
    assert response.headers["Cache-Control"] == "no-store"
    [opened] = rows_in_log(live_server, kind=Kind.ADMIN_OPEN)
    assert (opened.outcome, opened.member_id) == (Outcome.OK, portal.member_id)


def test_a_user_who_is_not_an_admin_gets_the_administrators_only_page(live_server):
    portal = install_portal(live_server)

    response = open_admin_page(live_server, portal.member_id, user_id=USER)

    assert response.status_code == 403
    assert "administrators only" in response.text
    assert page_config(response.text) is None
    assert "token" not in response.text
    assert (
        f"frame-ancestors {live_server.sandbox_url}"
        in (response.headers["Content-Security-Policy"])
    )
    flush(live_server)
    [refused] = rows_in_log(live_server, kind=Kind.ADMIN_OPEN)
    assert refused.outcome == Outcome.REFUSED
    assert refused.message == "User 2 is not an administrator"


def test_the_app_page_offers_the_admin_page_to_admins_only(live_server):
    portal = install_portal(live_server)
    for user_id, expected in ((ADMIN, True), (USER, False)):
        launch = live_server.sandbox.frame_launch(portal.member_id, user_id=user_id)
        response = frame_post(launch)
        assert response.status_code == 200
        assert page_config(response.text)["isAdmin"] is expected


def test_a_portal_admin_sees_that_portals_rows_only(live_server, two_portals):
    first, second = two_portals
    token = admin_token(live_server, first.member_id)
    flush(live_server)

    events = api(live_server, "/events", token).json()
    summary = api(live_server, "/summary", token).json()

    assert events["rows"]
    assert {row["member_id"] for row in events["rows"]} == {first.member_id}
    assert "first portal's ping" in [row["message"] for row in events["rows"]]
    assert [portal["member_id"] for portal in summary["portals"]] == [first.member_id]
    assert summary["scope"] == "portal"


def test_a_portal_admin_asking_for_another_portals_rows_is_refused(live_server, two_portals):
    first, second = two_portals
    token = admin_token(live_server, first.member_id)

    for path in ("/events", "/export"):
        response = api(live_server, path, token, member_id=second.member_id)
        assert response.status_code == 403
        assert response.json() == {"error": "This admin token shows its own portal's events only."}


def test_the_operator_link_shows_every_portal(live_server, two_portals):
    first, second = two_portals
    result = live_server.app.test_cli_runner().invoke(args=["admin-link", "--hours", "2"])
    assert result.exit_code == 0, result.output
    link = result.stdout.strip()
    assert link.startswith(f"{live_server.public_url}/admin/operator?token=")

    page = requests.get(link, timeout=10)

    assert page.status_code == 200
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    config = page_config(page.text)
    assert config["scope"] == "operator"
    assert config["memberId"] is None
    events = api(live_server, "/events", config["token"]).json()
    assert {row["member_id"] for row in events["rows"]} >= {
        first.member_id,
        second.member_id,
        None,
    }
    only_second = api(live_server, "/events", config["token"], member_id=second.member_id)
    assert {row["member_id"] for row in only_second.json()["rows"]} == {second.member_id}
    summary = api(live_server, "/summary", config["token"]).json()
    assert {portal["member_id"] for portal in summary["portals"]} == {
        first.member_id,
        second.member_id,
    }


@pytest.mark.parametrize(
    ("hours", "message"),
    [
        ("0", "0<x<=720"),
        ("721", "0<x<=720"),
        ("soon", "is not a valid float"),
        ("nan", "nan is not in the range 0<x<=720."),
        ("NaN", "nan is not in the range 0<x<=720."),
        ("inf", "inf is not in the range 0<x<=720."),
        ("-inf", "-inf is not in the range 0<x<=720."),
        ("1e400", "inf is not in the range 0<x<=720."),
    ],
)
def test_the_operator_link_command_refuses_bad_hours(live_server, hours, message):
    result = live_server.app.test_cli_runner().invoke(args=["admin-link", "--hours", hours])
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.parametrize(
    ("token", "status", "message"),
    [
        (None, 401, "An admin token is required (Authorization: Bearer …)."),
        ("forged.token.value", 401, "The admin token is not valid; reopen the admin page."),
    ],
)
def test_the_api_refuses_a_missing_or_forged_token(live_server, token, status, message):
    for path in ("/events", "/summary", "/export"):
        response = api(live_server, path, token)
        assert response.status_code == status
        assert response.json() == {"error": message}


def test_the_api_refuses_tokens_signed_with_another_key_or_for_the_app_page(live_server):
    portal = install_portal(live_server)
    forged = URLSafeTimedSerializer("another-key", salt="b24app.admin-token").dumps(
        {"scope": "operator", "exp": time.time() + 3600}
    )
    with live_server.app.app_context():
        page_token = issue_page_token(portal.member_id, ADMIN)
    for token in (forged, page_token):
        response = api(live_server, "/events", token)
        assert response.status_code == 401
        assert response.json() == {"error": "The admin token is not valid; reopen the admin page."}


def test_the_api_refuses_an_expired_token(live_server_factory):
    server = live_server_factory(env={"ADMIN_TOKEN_MAX_AGE": "1"})
    portal = install_portal(server)
    token = admin_token(server, portal.member_id)
    assert api(server, "/events", token).status_code == 200
    time.sleep(1.2)

    response = api(server, "/events", token)

    assert response.status_code == 401
    assert response.json() == {"error": "The admin token has expired; reopen the admin page."}


@pytest.mark.parametrize(
    ("make_token", "status", "message"),
    [
        (lambda: "forged", 401, "The admin token is not valid; print a new link"),
        (
            lambda: issue_operator_token(1 / 3600 / 10),
            401,
            "The admin token has expired; print a new link",
        ),
        (lambda: issue_admin_token("m1", 1), 403, "This link is not an operator link."),
    ],
)
def test_the_operator_page_refuses_other_links(live_server, make_token, status, message):
    with live_server.app.app_context():
        token = make_token()
    time.sleep(0.2)
    response = requests.get(
        f"{live_server.public_url}/admin/operator", params={"token": token}, timeout=10
    )
    assert response.status_code == status
    assert message in response.text
    assert page_config(response.text) is None
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


# Filters, paging and export through the API.


@pytest.fixture
def operator_token(live_server):
    with live_server.app.app_context():
        return issue_operator_token(1)


def test_the_api_filters_and_pages(live_server, operator_token):
    record(
        live_server,
        *[(Kind.PING_SEND, Outcome.OK, f"ping {number}", "m1") for number in range(7)],
        (Kind.EVENT, Outcome.REFUSED, "ONAPPINSTALL: wrong", "m2"),
    )
    seen, cursor = [], None
    while True:
        params = {"kind": "ping_send", "limit": 3}
        if cursor:
            params["before"] = cursor
        body = api(live_server, "/events", operator_token, **params).json()
        seen.append([row["message"] for row in body["rows"]])
        cursor = body["next"]
        if cursor is None:
            break
    assert seen == [
        ["ping 6", "ping 5", "ping 4"],
        ["ping 3", "ping 2", "ping 1"],
        ["ping 0"],
    ]
    refused = api(live_server, "/events", operator_token, outcome="refused", q="wrong").json()
    assert [row["message"] for row in refused["rows"]] == ["ONAPPINSTALL: wrong"]
    assert refused["filter"]["outcome"] == ["refused"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"limit": "0"}, "limit must be a whole number from 1 to 500."),
        ({"limit": "many"}, "limit must be a whole number from 1 to 500."),
        ({"before": "yesterday"}, "before must be a cursor from the previous page's next."),
        ({"before": "1_9999999999999999999"}, "before must be a cursor from the previous page"),
        ({"before": "\uff11_1"}, "before must be a cursor from the previous page"),
        ({"q": "\x00"}, "q must be text without NUL characters."),
        ({"until": "9999-12-31T23:59:59-14:00"}, "until is out of range"),
        ({"kind": "nonsense"}, "kind must be one of"),
        ({"since": "last week"}, "since must be an ISO 8601 time"),
    ],
)
def test_the_api_answers_bad_parameters_with_400(live_server, operator_token, params, message):
    response = api(live_server, "/events", operator_token, **params)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_the_csv_export_holds_the_filtered_rows_and_runs_no_formulas(live_server, operator_token):
    record(
        live_server,
        (Kind.EVENT, Outcome.REFUSED, '=HYPERLINK("http://evil.example","click")', "m1"),
        (Kind.EVENT, Outcome.REFUSED, "+1+1", "m1"),
        (Kind.EVENT, Outcome.REFUSED, "@SUM(A1)", "m1"),
        (Kind.PING_SEND, Outcome.OK, "not exported", "m1"),
    )
    response = api(live_server, "/export", operator_token, format="csv", kind="event")

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/csv")
    assert re.match(
        r'attachment; filename="event-log-\d{8}T\d{6}Z\.csv"',
        response.headers["Content-Disposition"],
    )
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [row["message"] for row in rows] == [
        "'@SUM(A1)",
        "'+1+1",
        '\'=HYPERLINK("http://evil.example","click")',
    ]
    assert {row["kind"] for row in rows} == {"event"}
    assert all(not row[column].startswith(("=", "+", "-", "@")) for row in rows for column in row)


def test_the_json_export_holds_the_filtered_rows(live_server, operator_token):
    record(
        live_server,
        *[(Kind.PING_SEND, Outcome.OK, f"ping {number}", "m1") for number in range(3)],
        (Kind.PING_SEND, Outcome.OK, "another portal", "m2"),
    )
    response = api(live_server, "/export", operator_token, format="json", member_id="m1")

    assert response.status_code == 200
    rows = response.json()
    assert [row["message"] for row in rows] == ["ping 2", "ping 1", "ping 0"]
    assert set(rows[0]) == {
        "id",
        "occurred_at",
        "member_id",
        "domain",
        "kind",
        "outcome",
        "message",
        "duration_ms",
        "details",
    }


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/admin/api/nothing", 404),
        ("DELETE", "/admin/api/events", 405),
        ("GET", "/api/nothing", 404),
        ("GET", "/api/ping-delivered", 405),
    ],
)
def test_the_json_apis_refuse_unknown_paths_and_methods_in_json(live_server, method, path, status):
    response = requests.request(method, live_server.public_url + path, timeout=10)

    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["error"]


def test_other_paths_keep_their_html_error_pages(live_server):
    response = requests.get(live_server.public_url + "/nothing", timeout=10)

    assert response.status_code == 404
    assert response.headers["Content-Type"].startswith("text/html")


def test_the_export_refuses_an_unknown_format(live_server, operator_token):
    response = api(live_server, "/export", operator_token, format="xlsx")
    assert response.status_code == 400
    assert response.json() == {"error": "format must be csv or json."}


# Ping deliveries.


def deliver(server, token, body):
    return requests.post(
        f"{server.public_url}/api/ping-delivered",
        json=body,
        headers={"Authorization": f"Bearer {token}"} if token else {},
        timeout=10,
    )


@pytest.fixture
def pinged_portal(live_server):
    portal = install_portal(live_server)
    with live_server.app.app_context():
        send_ping(portal.member_id, "main")
        send_ping(portal.member_id, "main")
    return portal


def receipts_to(server, member_id):
    return [
        message.params["receipt"]
        for message in server.sandbox.pushed_messages
        if message.member_id == member_id and message.command == "ping"
    ]


def test_a_delivered_ping_is_logged_with_its_delay(live_server, pinged_portal):
    with live_server.app.app_context():
        token = issue_page_token(pinged_portal.member_id, ADMIN)
    first, second = receipts_to(live_server, pinged_portal.member_id)

    response = deliver(live_server, token, {"receipt": second})

    assert response.status_code == 200
    flush(live_server)
    [row] = rows_in_log(live_server, kind=Kind.PING_DELIVERY)
    sends = rows_in_log(live_server, kind=Kind.PING_SEND, member_id=pinged_portal.member_id)
    assert [json.loads(send.details)["sequence"] for send in sends] == [1, 2]
    assert all(send.duration_ms > 0 for send in sends)
    sent_at = json.loads(sends[1].details)["sent_at"]
    assert row.member_id == pinged_portal.member_id
    assert json.loads(row.details) == {"sequence": 2, "sent_at": sent_at, "user_id": ADMIN}
    assert row.duration_ms == pytest.approx(response.json()["delay_ms"], abs=0.1)
    assert 0 <= response.json()["delay_ms"] < 60_000


def test_a_ping_counts_once_per_user_however_often_it_is_acknowledged(live_server, pinged_portal):
    member_id = pinged_portal.member_id
    with live_server.app.app_context():
        admin, user = issue_page_token(member_id, ADMIN), issue_page_token(member_id, 2)
    receipt = receipts_to(live_server, member_id)[0]

    first = deliver(live_server, admin, {"receipt": receipt})
    again = deliver(live_server, admin, {"receipt": receipt})
    other_user = deliver(live_server, user, {"receipt": receipt})

    assert (first.status_code, again.status_code, other_user.status_code) == (200, 409, 200)
    assert again.json() == {"error": "This ping was acknowledged already."}
    flush(live_server)
    rows = rows_in_log(live_server, kind=Kind.PING_DELIVERY)
    assert sorted(json.loads(row.details)["user_id"] for row in rows) == [ADMIN, 2]


def test_a_receipt_from_before_a_clean_uninstall_is_refused_after_the_reinstall(live_server):
    # Ping numbers start again with the new installation: its first ping is not the old one.
    sandbox = live_server.sandbox
    portal = install_with_handlers(live_server)
    with live_server.app.app_context():
        send_ping(portal.member_id, "main")
    sandbox.uninstall(portal.member_id, clean=True)
    sandbox.wait_for_event_deliveries(2)
    assert frame_post(sandbox.frame_launch(portal.member_id)).status_code == 200
    bind_lifecycle_events(live_server, portal)
    sandbox.finish_install(portal.member_id)
    sandbox.wait_for_event_deliveries(3)
    with live_server.app.app_context():
        send_ping(portal.member_id, "main")
        token = issue_page_token(portal.member_id, ADMIN)
    old, new = receipts_to(live_server, portal.member_id)

    refused = deliver(live_server, token, {"receipt": old})
    taken = deliver(live_server, token, {"receipt": new})

    assert refused.status_code == 400
    assert refused.json() == {
        "error": "receipt is of a ping to an earlier installation of the app."
    }
    assert taken.status_code == 200


def test_the_delay_is_measured_from_the_send_time_in_the_receipt(live_server, pinged_portal):
    with live_server.app.app_context():
        token = issue_page_token(pinged_portal.member_id, ADMIN)
        receipt = issue_ping_receipt(pinged_portal.member_id, 7, time.time())
    # The ping reaches the page a quarter of a second after it was sent.
    time.sleep(0.25)

    response = deliver(live_server, token, {"receipt": receipt})

    assert response.status_code == 200
    assert 250 <= response.json()["delay_ms"] < 5000


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (None, 400, "Send a JSON object with the ping's receipt only."),
        ([1, 2], 400, "Send a JSON object with the ping's receipt only."),
        ({}, 400, "Send a JSON object with the ping's receipt only."),
        ({"receipt": 1}, 400, "Send a JSON object with the ping's receipt only."),
        ({"receipt": "RECEIPT", "sent_at": 1}, 400, "Send a JSON object with the ping's receipt"),
        # The body of an older page: the sequence and send time as plain numbers.
        ({"sequence": 1, "sent_at": "NOW"}, 400, "Send a JSON object with the ping's receipt"),
        ({"receipt": "forged"}, 400, "receipt is not one that the app's scheduler issued."),
        ({"receipt": "ALTERED"}, 400, "receipt is not one that the app's scheduler issued."),
        ({"receipt": "OTHER KEY"}, 400, "receipt is not one that the app's scheduler issued."),
        ({"receipt": "PAGE TOKEN"}, 400, "receipt is not one that the app's scheduler issued."),
        ({"receipt": "OLD"}, 400, "receipt is of a ping sent more than an hour ago."),
        ({"receipt": "OTHER PORTAL"}, 403, "receipt is of a ping sent to another portal."),
    ],
)
def test_a_malformed_or_forged_delivery_is_refused_and_nothing_is_stored(
    live_server, pinged_portal, body, status, message
):
    member_id = pinged_portal.member_id
    receipt = receipts_to(live_server, member_id)[0]
    with live_server.app.app_context():
        token = issue_page_token(member_id, ADMIN)
        receipts = {
            "RECEIPT": receipt,
            "ALTERED": receipt.replace(receipt[:8], receipt[:8].swapcase()),
            "OTHER KEY": URLSafeSerializer("another key", salt="b24app.ping-receipt").dumps(
                [member_id, 1, time.time()]
            ),
            "PAGE TOKEN": token,
            "OLD": issue_ping_receipt(member_id, 1, time.time() - 7200),
            "OTHER PORTAL": issue_ping_receipt("another-portal", 1, time.time()),
        }
    if isinstance(body, dict):
        body = {key: receipts.get(value, value) for key, value in body.items()}

    response = deliver(live_server, token, body)

    assert response.status_code == status
    assert message in response.json()["error"]
    flush(live_server)
    assert rows_in_log(live_server, kind=Kind.PING_DELIVERY) == []


def test_an_oversized_delivery_is_refused_in_json(live_server, pinged_portal):
    with live_server.app.app_context():
        token = issue_page_token(pinged_portal.member_id, ADMIN)

    response = deliver(live_server, token, {"receipt": "x" * 2_000_000})

    assert response.status_code == 413
    assert "error" in response.json()


@pytest.mark.parametrize("body", ['{"receipt": "\\ud800"}', "[" * 100_000])
def test_json_the_app_cannot_hold_is_refused_as_malformed(live_server, pinged_portal, body):
    with live_server.app.app_context():
        token = issue_page_token(pinged_portal.member_id, ADMIN)

    response = requests.post(
        f"{live_server.public_url}/api/ping-delivered",
        data=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=10,
    )

    assert response.status_code == 400
    assert response.json() == {"error": "Send a JSON object with the ping's receipt only."}


def test_a_delivery_needs_a_page_token(live_server, pinged_portal):
    receipt = receipts_to(live_server, pinged_portal.member_id)[0]
    response = deliver(live_server, None, {"receipt": receipt})
    assert response.status_code == 401


def test_a_delivery_is_answered_even_when_the_log_cannot_be_written(live_server, pinged_portal):
    from sqlalchemy import text

    with live_server.app.app_context():
        token = issue_page_token(pinged_portal.member_id, ADMIN)
        eventlog.flush()
        with transaction() as session:
            session.execute(text("DROP TABLE event_log"))

    response = deliver(
        live_server, token, {"receipt": receipts_to(live_server, pinged_portal.member_id)[0]}
    )

    assert response.status_code == 200
    with live_server.app.app_context():
        assert eventlog.flush()
        assert eventlog.recorder().failed >= 1


# What the rest of the app records.


def test_the_portals_lifecycle_is_logged(live_server):
    sandbox = live_server.sandbox
    handler = f"{live_server.public_url}/events"
    portal = sandbox.create_portal()
    assert frame_post(sandbox.frame_launch(portal.member_id)).status_code == 200
    for event in ("ONAPPINSTALL", "ONAPPUNINSTALL"):
        sandbox.bind_event(portal.member_id, event, handler, 0, ADMIN)
    sandbox.finish_install(portal.member_id)
    sandbox.wait_for_event_deliveries(1)
    assert frame_post(sandbox.frame_launch(portal.member_id)).status_code == 200
    sandbox.expire_access_tokens(portal.member_id)
    with live_server.app.app_context():
        send_ping(portal.member_id, "main")
    bad = frame_post(sandbox.frame_launch(portal.member_id), {"AUTH_ID": "not-a-real-token"})
    assert bad.status_code == 403
    sandbox.uninstall(portal.member_id)
    sandbox.wait_for_event_deliveries(2)
    flush(live_server)

    logged = [
        (row.kind, row.outcome) for row in rows_in_log(live_server, member_id=portal.member_id)
    ]
    assert logged == [
        ("handshake", "ok"),
        ("install_start", "ok"),
        ("event", "received"),
        ("event", "ok"),
        ("install_finish", "ok"),
        ("handshake", "ok"),
        ("app_open", "ok"),
        ("token_refresh", "ok"),
        ("ping_send", "ok"),
        ("handshake", "refused"),
        # The uninstall is checked with the portal: its refusal of the tokens sends the app to
        # the OAuth server, which says the app is no longer installed.
        ("event", "received"),
        ("token_refresh", "failed"),
        ("event", "ok"),
        ("uninstall", "ok"),
    ]
    rows = rows_in_log(live_server, member_id=portal.member_id)
    assert {row.domain for row in rows} == {f"localhost:{live_server.port}"}
    assert "not-a-real-token" not in " ".join(row.details + row.message for row in rows)
    with live_server.app.app_context(), reading() as session:
        stored = session.scalar(select(Portal).where(Portal.member_id == portal.member_id))
        tokens = [stored.access_token, stored.refresh_token, portal.application_token]
    assert not any(
        token and token in row.details + row.message for row in rows for token in tokens
    )


def test_a_failed_ping_and_refresh_are_logged_with_their_codes(live_server):
    from b24app.scheduler import PingScheduler

    portal = install_portal(live_server)
    # The access token has expired and the stored refresh token is unknown to the OAuth server.
    live_server.sandbox.expire_access_tokens(portal.member_id)
    with live_server.app.app_context(), transaction() as session:
        session.execute(
            update(Portal)
            .where(Portal.member_id == portal.member_id)
            .values(refresh_token="unknown-refresh-token")
        )
    scheduler = PingScheduler(live_server.app)
    try:
        scheduler._ping(portal.member_id)
    finally:
        scheduler._pool.shutdown()
    flush(live_server)

    failures = [
        (row.kind, row.outcome, json.loads(row.details).get("error"))
        for row in rows_in_log(live_server, member_id=portal.member_id)
        if row.outcome == "failed"
    ]
    assert [kind for kind, _, _ in failures] == ["token_refresh", "ping_send"]
    assert failures == [
        ("token_refresh", "failed", "invalid_grant"),
        ("ping_send", "failed", "invalid_grant"),
    ]


# The live tail.


def tail(server, token, after=None, **filters):
    """Open the live tail and send its first message; return the socket and its ready message."""
    ws = Client.connect(f"ws://127.0.0.1:{server.port}/admin/api/tail")
    ws.send(json.dumps({"token": token, "filter": filters, "after": after}))
    return ws


def receive(ws, timeout=3.0):
    frame = ws.receive(timeout=timeout)
    assert frame is not None, "nothing arrived on the live tail"
    return json.loads(frame)


def test_the_live_tail_sends_new_rows_of_the_tokens_portal(live_server, two_portals):
    first, second = two_portals
    token = admin_token(live_server, first.member_id)
    flush(live_server)
    ws = tail(live_server, token)
    try:
        ready = receive(ws)
        assert ready["type"] == "ready"

        started = time.monotonic()
        record(
            live_server,
            (Kind.PING_SEND, Outcome.OK, "other portal, not sent", second.member_id),
            (Kind.PING_SEND, Outcome.OK, "new ping", first.member_id),
        )
        message = receive(ws)
        elapsed = time.monotonic() - started
    finally:
        ws.close()

    assert message["type"] == "rows"
    assert [(row["message"], row["member_id"]) for row in message["rows"]] == [
        ("new ping", first.member_id)
    ]
    # Within a second of being written (the socket polls every half second).
    assert elapsed < 1.5


def test_the_live_tail_applies_the_pages_filter(live_server, operator_token):
    ws = tail(live_server, operator_token, kind=["ping_send"], outcome="failed")
    try:
        assert receive(ws)["type"] == "ready"
        record(
            live_server,
            (Kind.PING_SEND, Outcome.OK, "fine", "m1"),
            (Kind.PING_SEND, Outcome.FAILED, "failed", "m1"),
        )
        message = receive(ws)
    finally:
        ws.close()
    assert [row["message"] for row in message["rows"]] == ["failed"]


def closing(ws):
    """Wait for the server to close the socket; return its close code and reason."""
    with pytest.raises(ConnectionClosed) as closed:
        for _ in range(50):
            ws.receive(timeout=0.2)
    return closed.value.reason, closed.value.message


def test_the_live_tail_closes_when_the_token_expires(live_server_factory):
    server = live_server_factory(env={"ADMIN_TOKEN_MAX_AGE": "1.5"})
    portal = install_portal(server)
    token = admin_token(server, portal.member_id)
    ws = tail(server, token)
    assert receive(ws)["type"] == "ready"

    started = time.monotonic()
    code, reason = closing(ws)

    assert code == 4401
    assert reason == "The admin token has expired; reopen the admin page."
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    ("first_message", "code", "reason"),
    [
        ({"token": "forged"}, 4401, "The admin token is not valid; reopen the admin page."),
        ({"filter": {}}, 4401, "Send the admin token first."),
        ("not json", 4400, "The first message must be a JSON object."),
        ("[" * 100_000, 4400, "The first message must be a JSON object."),
        ('{"token": "\\ud800"}', 4400, "The first message must be a JSON object."),
        ("OPERATOR:kind=bad", 4400, "kind must be one of"),
        ("OPERATOR:after=-1", 4400, "after must be the id of a row"),
        (f"OPERATOR:after={10**30}", 4400, "after must be the id of a row"),
        ("OPERATOR:until=9999-12-31T23:59:59-14:00", 4400, "until is out of range"),
        ("PORTAL:member_id=other", 4403, "This admin token shows its own portal's events only."),
    ],
)
def test_the_live_tail_refuses_a_bad_opening(live_server, first_message, code, reason):
    with live_server.app.app_context():
        tokens = {
            "OPERATOR": issue_operator_token(1),
            "PORTAL": issue_admin_token("m1", ADMIN),
        }
    if isinstance(first_message, str) and first_message.startswith(("OPERATOR:", "PORTAL:")):
        scope, _, change = first_message.partition(":")
        name, _, value = change.partition("=")
        opening = {"token": tokens[scope], "filter": {}, "after": None}
        if name == "after":
            opening["after"] = int(value)
        else:
            opening["filter"][name] = value
        first_message = opening
    ws = Client.connect(f"ws://127.0.0.1:{live_server.port}/admin/api/tail")
    ws.send(first_message if isinstance(first_message, str) else json.dumps(first_message))

    closed_code, closed_reason = closing(ws)

    assert closed_code == code
    assert reason in closed_reason


def test_the_tail_url_follows_the_public_url(live_server):
    portal = install_portal(live_server)
    config = page_config(open_admin_page(live_server, portal.member_id).text)
    assert urlsplit(config["tailUrl"]).netloc == urlsplit(live_server.public_url).netloc
    assert config["apiUrl"] == live_server.public_url + "/admin/api"
