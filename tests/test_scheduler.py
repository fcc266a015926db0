import logging
import re
import socket
import time

from sqlalchemy import update

from b24app import store
from b24app.db import transaction
from b24app.eventlog.pruning import PRUNE_INTERVAL, PRUNE_JOB
from b24app.models import Portal
from b24app.scheduler import PING_JOB, start_scheduler
from tests.conftest import install_portal, stored


def wait_until(condition, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def pings_to(server, member_id):
    return [
        message
        for message in server.sandbox.pushed_messages
        if message.member_id == member_id and message.command == "ping"
    ]


def test_every_installed_portal_gets_numbered_pings_on_the_configured_module(
    live_server_factory,
):
    server = live_server_factory(env={"PING_INTERVAL": "0.2", "PULL_MODULE_ID": "ping.test"})
    first, second = install_portal(server), install_portal(server)
    not_installed = server.sandbox.create_portal()

    scheduler = start_scheduler(server.app)
    try:
        assert wait_until(
            lambda: (
                len(pings_to(server, first.member_id)) >= 4
                and len(pings_to(server, second.member_id)) >= 4
            )
        )
    finally:
        scheduler.shutdown()

    for portal in (first, second):
        pings = pings_to(server, portal.member_id)
        assert [ping.params["sequence"] for ping in pings] == list(range(1, len(pings) + 1))
        for ping in pings:
            assert ping.module_id == "ping.test"
            assert ping.params["source"] == "scheduler"
            assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", ping.params["param_1"])
            assert abs(ping.params["sent_at"] - time.time()) < 30
        with server.app.app_context():
            row = store.get_portal(portal.member_id)
        assert row.ping_sequence == len(pings)
        assert row.last_ping_at is not None
    assert pings_to(server, not_installed.member_id) == []
    mids = [message.mid for message in server.sandbox.pushed_messages]
    assert len(mids) == len(set(mids))


def test_a_portal_that_hangs_does_not_delay_the_others(live_server_factory, caplog):
    caplog.set_level(logging.INFO, logger="b24app.scheduler")
    server = live_server_factory(env={"PING_INTERVAL": "0.2", "REST_TIMEOUT": "3"})
    healthy, hanging = install_portal(server), install_portal(server)
    # A server that accepts connections and never answers.
    black_hole = socket.socket()
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(16)
    port = black_hole.getsockname()[1]
    with server.app.app_context(), transaction() as session:
        session.execute(
            update(Portal)
            .where(Portal.member_id == hanging.member_id)
            .values(client_endpoint=f"http://127.0.0.1:{port}/rest/")
        )

    scheduler = start_scheduler(server.app)
    try:
        started = time.monotonic()
        assert wait_until(lambda: len(pings_to(server, healthy.member_id)) >= 8, timeout=2.5)
        elapsed = time.monotonic() - started
    finally:
        scheduler.shutdown()
        black_hole.close()

    # Eight pings at 0.2 s intervals while the other portal's first call is still hanging.
    assert elapsed < 2.5
    assert pings_to(server, hanging.member_id) == []
    messages = [record.getMessage() for record in caplog.records]
    assert f"Portal {hanging.member_id}: previous ping still under way, skipped" in messages


def test_a_portal_that_lost_access_is_marked_and_the_others_keep_their_pings(
    live_server_factory, caplog
):
    caplog.set_level(logging.WARNING, logger="b24app")
    server = live_server_factory(env={"PING_INTERVAL": "0.2"})
    healthy, failing = install_portal(server), install_portal(server)
    with server.app.app_context(), transaction() as session:
        session.execute(
            update(Portal)
            .where(Portal.member_id == failing.member_id)
            .values(access_token="revoked-token", refresh_token="used-refresh-token")
        )

    scheduler = start_scheduler(server.app)
    try:
        assert wait_until(lambda: len(pings_to(server, healthy.member_id)) >= 3)
    finally:
        scheduler.shutdown()

    assert pings_to(server, failing.member_id) == []
    assert stored(server, failing.member_id).access_problem == "needs_reauth"
    refusals = [
        record.getMessage()
        for record in caplog.records
        if record.getMessage().startswith(f"Portal {failing.member_id}: token refresh refused")
    ]
    # Refused once, then no longer called.
    assert refusals == [
        f"Portal {failing.member_id}: token refresh refused, needs_reauth: invalid_grant"
    ]


def test_the_scheduler_logs_its_start_and_stop_and_schedules_the_prune_job(live_server):
    from tests.test_admin import rows_in_log

    scheduler = start_scheduler(live_server.app)
    jobs = {job.id: job for job in scheduler._scheduler.get_jobs()}
    scheduler.shutdown()

    assert set(jobs) == {PING_JOB, PRUNE_JOB}
    assert jobs[PRUNE_JOB].trigger.interval.total_seconds() == PRUNE_INTERVAL
    kinds = [row.kind for row in rows_in_log(live_server) if row.kind.startswith("scheduler")]
    assert kinds == ["scheduler_start", "scheduler_stop"]
