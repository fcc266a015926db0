import multiprocessing
import os

from b24app import create_app
from b24app.scheduler import claim_tick, tick_start


def test_a_tick_is_claimed_once(app):
    with app.app_context():
        assert claim_tick("ping", 10) is True
        assert claim_tick("ping", 10) is False
        assert claim_tick("ping", 9) is False
        assert claim_tick("ping", 11) is True
        assert claim_tick("other", 10) is True


def _claim_ticks(database_url, instance_path, ticks, start, results):
    os.environ["B24_INSTANCE_PATH"] = instance_path
    app = create_app({"DATABASE_URL": database_url})
    with app.app_context():
        start.wait()
        results.extend([tick for tick in range(1, ticks + 1) if claim_tick("ping", tick)])


def test_processes_racing_for_ticks_claim_each_tick_exactly_once(tmp_path, database_url):
    url = database_url
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        results = manager.list()
        start = manager.Barrier(4)
        workers = [
            context.Process(target=_claim_ticks, args=(url, str(tmp_path), 40, start, results))
            for _ in range(4)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
            assert worker.exitcode == 0
        claimed = list(results)
    assert sorted(claimed) == list(range(1, 41))


def test_tick_names_keep_growing_when_the_interval_changes(app):
    now = 1_800_000_000.7
    with app.app_context():
        assert claim_tick("ping", tick_start(0.2, now)) is True
        # A restart with a longer interval: the next interval's tick is still claimable.
        assert claim_tick("ping", tick_start(1.0, now + 1)) is True
        assert claim_tick("ping", tick_start(0.5, now + 1.6)) is True
    assert tick_start(0.2, now) == 1_800_000_000_600
    assert tick_start(1.0, now) == 1_800_000_000_000
