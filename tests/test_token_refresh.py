"""One refresh per expired token, whoever meets it: threads and OS processes, every database."""

import multiprocessing
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from b24app import create_app
from b24app.bitrix import rest_client
from b24app.bitrix.errors import BitrixError
from tests.conftest import install_portal, stored

PROCESSES = 4
THREADS_PER_PROCESS = 3


def _call_at_once(env, member_id, start, results):
    """In a fresh process: build the app, wait for the others, then call from several threads."""
    os.environ.update(env)
    app = create_app()

    def one_call(_):
        with app.app_context():
            try:
                return rest_client().call(member_id, "profile")["result"]["ID"]
            except BitrixError as exc:
                return f"{type(exc).__name__} {exc.code}"

    start.wait()
    with ThreadPoolExecutor(max_workers=THREADS_PER_PROCESS) as pool:
        results.extend(list(pool.map(one_call, range(THREADS_PER_PROCESS))))


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_processes_meeting_an_expired_token_at_once_refresh_it_once(
    live_server_factory, database_url, tmp_path
):
    server = live_server_factory(test_config={"DATABASE_URL": database_url})
    portal = install_portal(server)
    server.sandbox.expire_access_tokens(portal.member_id)
    env = {
        "DATABASE_URL": database_url,
        "B24_PUBLIC_URL": server.public_url,
        "B24_SANDBOX_URL": server.sandbox_url,
        "B24_INSTANCE_PATH": str(tmp_path / "workers"),
        "LOG_LEVEL": "WARNING",
        # The workers' own instance folder has no key: they share the server's.
        "TOKEN_ENCRYPTION_KEYS": ",".join(server.app.config["TOKEN_ENCRYPTION_KEYS"]),
    }

    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        results = manager.list()
        start = manager.Barrier(PROCESSES)
        workers = [
            context.Process(target=_call_at_once, args=(env, portal.member_id, start, results))
            for _ in range(PROCESSES)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
            assert worker.exitcode == 0
        answers = list(results)

    assert answers == ["1"] * (PROCESSES * THREADS_PER_PROCESS)
    assert server.sandbox.refresh_counts[portal.member_id] == 1
    after = stored(server, portal.member_id)
    assert after.access_problem is None
    # The stored tokens are the live ones: a call from here needs no refresh.
    with server.app.app_context():
        assert rest_client().call(portal.member_id, "profile")["result"]["ID"] == "1"
    assert server.sandbox.refresh_counts[portal.member_id] == 1
