"""The allocator's ticker: expiry passes and the pruning of old history (policy retention)."""

from __future__ import annotations

from allocator.model import AllocationRequest
from allocator.runtime import Ticker, prune_history
from allocator.service import Allocator, Settings
from allocator.store_sqlite import SqliteAllocationStore
from ds01.clock import FrozenClock
from ds01.policy import parse_policy
from tests.harness.waiting import eventually

from .conftest import WAIT


def _service(tmp_path, sim_backend, clock, history="1h"):
    return Allocator(
        store=SqliteAllocationStore(tmp_path / "a.sqlite"),
        backend=sim_backend,
        policy=parse_policy({"allocation_history": history}),
        clock=clock,
        settings=Settings(inventory_refresh=0),
    )


def _grant_and_release(service):
    alloc = service.submit(AllocationRequest(user="alice"), wait=False)
    service.release(alloc.id, user="alice")
    return alloc.id


def test_history_is_kept_for_the_policy_retention_then_pruned(tmp_path, sim_backend):
    clock = FrozenClock()
    service = _service(tmp_path, sim_backend, clock, history="1h")
    old = _grant_and_release(service)
    clock.advance(1800)
    recent = _grant_and_release(service)
    live = service.submit(AllocationRequest(user="bob"), wait=False)
    assert prune_history(service) == 0  # nothing is an hour old yet
    clock.advance(1801)
    assert prune_history(service) == 1
    with service.store.transaction() as tx:
        assert {a.id for a in tx.history()} == {recent, live.id}
    assert old not in {a.id for a in service.live()}


def test_the_ticker_prunes_at_its_interval(tmp_path, sim_backend):
    clock = FrozenClock()
    service = _service(tmp_path, sim_backend, clock, history="10m")
    gone = _grant_and_release(service)
    clock.advance(601)
    ticker = Ticker(service, 0.01, prune_interval=0.05).start()
    try:
        eventually(lambda: ticker.pruned, WAIT, "the ticker to prune the old allocation")
        with service.store.transaction() as tx:
            assert tx.get(gone) is None
        assert ticker.pruned == 1
        assert ticker.errors == 0
    finally:
        ticker.stop()


def test_the_ticker_checkpoints_the_store_outside_the_decisions(tmp_path, sim_backend):
    service = _service(tmp_path, sim_backend, FrozenClock())
    database = tmp_path / "a.sqlite"
    before = database.stat().st_size
    for _ in range(100):
        _grant_and_release(service)
    assert database.stat().st_size == before  # the commits wrote the WAL only
    ticker = Ticker(service, 0.01).start()
    try:
        eventually(
            lambda: database.stat().st_size > before, WAIT, "the ticker to checkpoint the WAL"
        )
        assert ticker.errors == 0
    finally:
        ticker.stop()
