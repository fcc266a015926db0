"""End to end in a real headless Chromium: the sandbox portal, the install page, the app page."""

import os

import pytest
from browser_helpers import (
    CHROMIUM_ARGS,
    CHROMIUM_PATH,
    DATE_FOR_LOG,
    INSTALL_TIMEOUT_MS,
    PAGE_TIMEOUT_MS,
    ConsoleLog,
    app_frame,
    received_pings,
    save_artifacts,
    wait_for_app_state,
    wait_until,
)

from tests.conftest import stored

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM_PATH),
    reason=f"No Chromium at {CHROMIUM_PATH}; Playwright's own browser download is not used here",
)

ADMIN = 1


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM_PATH, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, request):
    """Give a fresh browser page; keep its screenshot and console log if the test fails."""
    context = browser.new_context()
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    page = context.new_page()
    console = ConsoleLog(page)
    # The call phase's report is logged before fixtures are torn down, so a failure of the
    # test itself has already been counted here.
    failures_before = request.session.testsfailed
    yield page
    if request.session.testsfailed > failures_before:
        save_artifacts(page, console, request.node.name)
    context.close()


@pytest.fixture
def scheduled_server(live_server_factory):
    """Start a live server whose scheduler pings every half second."""
    from b24app.scheduler import start_scheduler

    server = live_server_factory(env={"PING_INTERVAL": "0.5"})
    scheduler = start_scheduler(server.app)
    yield server
    scheduler.shutdown()


def install_app(page, server):
    """Create a sandbox portal, install the app in it as the admin; return the portal."""
    portal = server.sandbox.create_portal()
    page.goto(f"{server.sandbox_url}/portal/{portal.member_id}/?user={ADMIN}")
    page.click("#install-button")
    # The install page binds the events and calls installFinish; the portal then reloads and
    # opens the handler path, whose page ends up ready once its Pull client is started.
    wait_for_app_state(page, "ready", timeout=INSTALL_TIMEOUT_MS)
    return portal


def post_form(page, url, fields, target):
    """Submit ``fields`` to ``url`` from ``page`` as a form POST into ``target``."""
    page.evaluate(
        """([url, fields, target]) => {
            const form = document.createElement('form');
            form.method = 'POST';
            form.action = url;
            form.target = target;
            for (const [name, value] of Object.entries(fields)) {
                const input = document.createElement('input');
                input.type = 'hidden';
                input.name = name;
                input.value = value;
                form.append(input);
            }
            document.body.append(form);
            form.submit();
        }""",
        [url, fields, target],
    )


def test_scheduler_pings_reach_the_app_page(page, scheduled_server):
    server = scheduled_server
    portal = install_app(page, server)
    frame = app_frame(page)

    frame.wait_for_function(
        "n => window.appPings.filter(m => m.params.source === 'scheduler').length >= n",
        arg=4,
        timeout=PAGE_TIMEOUT_MS,
    )
    pings = received_pings(frame, source="scheduler")

    assert {ping["command"] for ping in pings} == {"ping"}
    for ping in pings:
        assert DATE_FOR_LOG.match(ping["params"]["param_1"]), ping
    sequences = [ping["params"]["sequence"] for ping in pings]
    assert sequences == sorted(set(sequences)), sequences

    pushed = {
        (message.params["sequence"], message.params["param_1"])
        for message in server.sandbox.pushed_messages
        if message.member_id == portal.member_id and message.params.get("source") == "scheduler"
    }
    received = {(ping["params"]["sequence"], ping["params"]["param_1"]) for ping in pings}
    assert received <= pushed

    assert stored(server, portal.member_id).ping_sequence >= max(sequences)

    newest_row = frame.locator("#ping-rows tr").first
    assert int(newest_row.get_attribute("data-sequence")) >= max(sequences)
    assert int(frame.locator("#ping-count").text_content()) >= len(pings)


def test_browser_ping_round_trips_through_the_push_server(page, live_server):
    portal = install_app(page, live_server)
    frame = app_frame(page)
    # A ping pushed before the page's socket is open reaches nobody, as on a real portal.
    frame.locator("body[data-pull='online']").wait_for(state="attached")

    frame.click("#send-ping")
    frame.locator("#ping-rows tr[data-source='browser']").wait_for(timeout=PAGE_TIMEOUT_MS)

    [ping] = received_pings(frame, source="browser")
    assert ping["command"] == "ping"
    assert DATE_FOR_LOG.match(ping["params"]["param_1"]), ping
    pushed = [
        message
        for message in live_server.sandbox.pushed_messages
        if message.member_id == portal.member_id and message.params.get("source") == "browser"
    ]
    assert [message.params["param_1"] for message in pushed] == [ping["params"]["param_1"]]


def test_app_page_outside_a_portal_says_so(page, live_server):
    page.goto(f"{live_server.public_url}/app")

    page.locator("body[data-state='outside']").wait_for(state="attached", timeout=5_000)
    assert "inside a Bitrix24 portal" in page.text_content("#status")


def test_frame_page_loaded_top_level_says_so(page, live_server):
    portal = live_server.sandbox.create_portal()
    launch = live_server.sandbox.frame_launch(portal.member_id, user_id=ADMIN)

    # A genuine frame POST, but into a top-level window: the backend renders the install page,
    # and the page itself must notice that no portal is around it.
    page.goto("about:blank")
    post_form(page, launch.url, launch.form, target="_self")

    page.locator("body[data-state='outside']").wait_for(state="attached", timeout=5_000)
    assert page.locator("#page-config").count() == 1
    assert "inside a Bitrix24 portal" in page.text_content("#status")


def test_app_page_gives_up_when_the_portal_does_not_answer(page, live_server):
    portal = live_server.sandbox.create_portal()
    live_server.sandbox.finish_install(portal.member_id)
    launch = live_server.sandbox.frame_launch(portal.member_id, user_id=ADMIN)
    # The right parent origin and window name, but nobody answers the SDK's getInitData: the
    # sandbox's portal list is such a page. (A page faked with page.route would not do: Chromium
    # counts it as a public site and blocks its frame to 127.0.0.1.)
    page.goto(f"{live_server.sandbox_url}/")
    page.evaluate(
        """name => {
            const frame = document.createElement('iframe');
            frame.id = 'app-frame';
            frame.name = name;
            document.body.append(frame);
        }""",
        launch.iframe_name,
    )
    post_form(page, launch.url, launch.form, target=launch.iframe_name)

    frame = wait_for_app_state(page, "error", timeout=20_000)
    assert "Could not reach the portal" in frame.text_content("#status")


def test_install_event_reaches_the_backend(page, live_server):
    portal = install_app(page, live_server)

    delivery = wait_until(
        lambda: next(
            (
                record
                for record in live_server.sandbox.event_deliveries
                if record.member_id == portal.member_id and record.event == "ONAPPINSTALL"
            ),
            None,
        ),
        message="the ONAPPINSTALL delivery",
    )
    assert delivery.handler == f"{live_server.public_url}/events"
    assert delivery.status == 200
    row = stored(live_server, portal.member_id)
    assert row.install_state == "installed"
    assert row.application_token == portal.application_token
    assert [
        (bound.event, bound.handler)
        for bound in live_server.sandbox.bound_events(portal.member_id)
    ] == [
        ("ONAPPINSTALL", f"{live_server.public_url}/events"),
        ("ONAPPUNINSTALL", f"{live_server.public_url}/events"),
    ]


def test_install_accepts_a_handler_that_is_already_bound(page, live_server):
    handler = f"{live_server.public_url}/events"
    portal = live_server.sandbox.create_portal()
    # Left over from an earlier attempt: event.bind now answers "Handler already binded".
    live_server.sandbox.bind_event(portal.member_id, "ONAPPINSTALL", handler, 0, ADMIN)
    page.goto(f"{live_server.sandbox_url}/portal/{portal.member_id}/?user={ADMIN}")

    page.click("#install-button")

    wait_for_app_state(page, "ready", timeout=INSTALL_TIMEOUT_MS)
    assert live_server.sandbox.get_portal(portal.member_id).installed
    assert [bound.event for bound in live_server.sandbox.bound_events(portal.member_id)] == [
        "ONAPPINSTALL",
        "ONAPPUNINSTALL",
    ]


def test_install_page_shows_the_portals_error(page, live_server):
    portal = live_server.sandbox.create_portal()

    def refuse_bind(route):
        headers = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Headers": "*"}
        if route.request.method == "OPTIONS":
            route.fulfill(status=204, headers=headers)
            return
        route.fulfill(
            status=400,
            headers=headers,
            json={"error": "ERROR_WRONG_HANDLER_URL", "error_description": "<b>Bad</b> URL"},
        )

    page.route(f"{live_server.sandbox_url}/rest/event.bind*", refuse_bind)
    page.goto(f"{live_server.sandbox_url}/portal/{portal.member_id}/?user={ADMIN}")

    page.click("#install-button")

    frame = wait_for_app_state(page, "error")
    step = frame.locator("#steps li[data-step='bind-ONAPPINSTALL']")
    assert step.get_attribute("data-result") == "error"
    # The portal's text is shown as text, markup and all, never as HTML.
    assert "<b>Bad</b> URL" in step.text_content()
    assert "<b>Bad</b> URL" in frame.text_content("#status")
    assert frame.locator("#steps b").count() == 0
    assert not live_server.sandbox.get_portal(portal.member_id).installed


def scheduler_pings_pushed(server, member_id):
    """Return the sequence numbers of the scheduler pings the sandbox pushed to a portal."""
    return [
        message.params["sequence"]
        for message in list(server.sandbox.pushed_messages)
        if message.member_id == member_id and message.params.get("source") == "scheduler"
    ]


def test_expired_tokens_are_renewed_in_the_frame_and_in_the_backend(page, live_server_factory):
    from b24app.scheduler import start_scheduler

    server = live_server_factory(
        env={"PING_INTERVAL": "0.5", "SANDBOX_ACCESS_TOKEN_LIFETIME": "3"}
    )
    scheduler = start_scheduler(server.app)
    try:
        portal = install_app(page, server)
        frame = app_frame(page)
        frame.locator("body[data-pull='online']").wait_for(state="attached")
        # Let the frame's token and the backend's stored token both outlive their 3 s.
        page.wait_for_timeout(3500)

        frame.click("#send-ping")
        frame.locator("#ping-rows tr[data-source='browser']").wait_for(timeout=PAGE_TIMEOUT_MS)
        before = max(scheduler_pings_pushed(server, portal.member_id), default=0)
        wait_until(
            lambda: max(scheduler_pings_pushed(server, portal.member_id), default=0) > before + 2,
            timeout=15,
            message="scheduler pings after the backend's token expired",
        )
    finally:
        scheduler.shutdown()

    # The frame asked its parent for fresh tokens; the backend refreshed through OAuth.
    assert page.locator("#message-log li[data-command='refreshAuth']").count() >= 1
    assert server.sandbox.refresh_counts.get(portal.member_id, 0) >= 1


@pytest.mark.parametrize("clean", [False, True], ids=["keep-data", "delete-data"])
def test_pings_stop_after_an_uninstall_and_resume_after_a_reinstall(page, scheduled_server, clean):
    server = scheduled_server
    portal = install_app(page, server)
    wait_until(
        lambda: len(scheduler_pings_pushed(server, portal.member_id)) >= 2,
        timeout=15,
        message="the first scheduler pings",
    )

    if clean:
        page.check("#uninstall-clean")
    page.click("#uninstall-button")
    page.locator("#install-button").wait_for(timeout=PAGE_TIMEOUT_MS)
    # Deleting the app's data deletes the portal's row; otherwise it is kept, uninstalled.
    wait_until(
        lambda: (
            stored(server, portal.member_id) is None
            if clean
            else stored(server, portal.member_id).install_state == "uninstalled"
        ),
        message="the app to record the uninstall",
    )
    last_before = max(scheduler_pings_pushed(server, portal.member_id))
    pushed_before = len(scheduler_pings_pushed(server, portal.member_id))
    # Three intervals with no ping to an uninstalled portal (one may have been under way).
    page.wait_for_timeout(1500)
    assert len(scheduler_pings_pushed(server, portal.member_id)) <= pushed_before + 1

    page.click("#install-button")
    frame = wait_for_app_state(page, "ready", timeout=INSTALL_TIMEOUT_MS)
    # A portal installed from scratch counts its pings from 1 again.
    frame.wait_for_function(
        "n => window.appPings.some(m => m.params.source === 'scheduler' && m.params.sequence > n)",
        arg=0 if clean else last_before + 1,
        timeout=PAGE_TIMEOUT_MS,
    )
    row = stored(server, portal.member_id)
    assert row.install_state == "installed"
    assert row.application_token == server.sandbox.get_portal(portal.member_id).application_token


def slider_frame(page):
    """Return the Playwright frame of the portal's slider (openApplication's panel)."""
    handle = page.wait_for_selector("#slider-frame", state="attached", timeout=PAGE_TIMEOUT_MS)
    return handle.content_frame()


def delivered_pings(server, member_id):
    """Return how many ping deliveries the app's log holds for the portal."""
    from sqlalchemy import func, select

    from b24app import eventlog
    from b24app.db import reading
    from b24app.models import EventLogEntry

    with server.app.app_context():
        eventlog.flush()
        with reading() as session:
            return session.scalar(
                select(func.count())
                .select_from(EventLogEntry)
                .where(
                    EventLogEntry.member_id == member_id,
                    EventLogEntry.kind == "ping_delivery",
                )
            )


def test_admin_page_shows_the_chart_and_new_pings_through_the_live_tail(page, scheduled_server):
    from b24app import eventlog

    server = scheduled_server
    portal = install_app(page, server)
    # The app page acknowledges each scheduler ping, which gives the chart its delays.
    wait_until(
        lambda: delivered_pings(server, portal.member_id) >= 2,
        timeout=20,
        message="ping deliveries acknowledged by the app page",
    )
    with server.app.app_context():
        eventlog.record(
            "event",
            "refused",
            '<img src=x id="injected"> from outside',
            member_id=portal.member_id,
            details={"payload": "<script>window.injected = 1</script>"},
        )
        eventlog.flush()

    app_frame(page).click("#open-admin")
    page.frame_locator("#slider-frame").locator("body[data-state='ready']").wait_for(
        state="attached", timeout=PAGE_TIMEOUT_MS
    )
    admin = slider_frame(page)
    admin.locator("body[data-tail='live']").wait_for(state="attached")

    chart = admin.locator(f"#summary-rows tr[data-member-id='{portal.member_id}'] svg.chart")
    assert int(chart.get_attribute("data-deliveries")) >= 1
    assert admin.locator("svg.chart polyline.delay").count() >= 1
    summary_row = admin.locator(f"#summary-rows tr[data-member-id='{portal.member_id}']")
    assert " ms" in summary_row.text_content()

    shown_before = admin.evaluate(
        "Math.max(...[...document.querySelectorAll('#event-rows tr')].map(r => +r.dataset.id))"
    )
    admin.wait_for_function(
        "id => window.adminTail.received.some(r => r.kind === 'ping_send' && r.id > id)",
        arg=shown_before,
        # Polled by time: Chromium may hold back animation frames in a frame it throttles.
        polling=100,
        timeout=PAGE_TIMEOUT_MS,
    )
    newest = admin.locator("#event-rows tr").first
    assert int(newest.get_attribute("data-id")) > shown_before
    live_ping = admin.locator("#event-rows tr[data-kind='ping_send']").first
    assert int(live_ping.get_attribute("data-id")) > shown_before

    # What came from outside is shown as text, never run or rendered as markup.
    hostile = admin.locator("#event-rows tr[data-kind='event'][data-outcome='refused']").first
    assert '<img src=x id="injected"> from outside' in hostile.text_content()
    assert "<script>window.injected = 1</script>" in hostile.text_content()
    assert admin.locator("#injected").count() == 0
    assert admin.evaluate("window.injected === undefined")


def test_admin_page_refuses_a_user_who_is_not_an_administrator(page, live_server):
    portal = live_server.sandbox.create_portal()
    live_server.sandbox.finish_install(portal.member_id)
    page.goto(f"{live_server.sandbox_url}/portal/{portal.member_id}/?user=2")
    frame = wait_for_app_state(page, "ready", timeout=INSTALL_TIMEOUT_MS)
    # The app page does not offer the event log to a user who is not an administrator...
    assert frame.locator("#open-admin").is_hidden()

    # ...and the portal's own entry to it gets the refusal.
    page.click("#open-admin-button")
    page.frame_locator("#slider-frame").locator("body[data-state='refused']").wait_for(
        state="attached", timeout=PAGE_TIMEOUT_MS
    )
    refused = slider_frame(page)
    assert "administrators only" in refused.text_content("#status")
    assert refused.locator("#event-rows").count() == 0
