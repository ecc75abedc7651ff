"""Idle and runtime clocks: only move forward, persist atomically, survive a restart."""

from __future__ import annotations

import json

import pytest

from exporter.clocks import (
    ClockBook,
    ClockStateError,
    ClockStore,
    ContainerClock,
    advance_container,
    advance_device,
)
from exporter.health import ErrorCounters
from exporter.service import load_clocks


def test_a_new_container_is_busy_since_its_start():
    clock = advance_container(None, started_at=100.0, busy=False, now=130.0)
    assert clock == ContainerClock(first_start=100.0, last_busy=100.0)


def test_a_container_started_before_measuring_began_is_not_called_idle_for_that_time():
    clock = advance_container(None, started_at=100.0, busy=False, now=530.0, measured_since=500.0)
    assert clock == ContainerClock(first_start=100.0, last_busy=500.0)


def test_a_saved_clock_resumes_idle_time_from_the_restart_not_from_before_the_downtime():
    saved = ContainerClock(first_start=100.0, last_busy=200.0)  # idle since 200, then a crash
    after = advance_container(
        saved, started_at=100.0, busy=False, now=2010.0, measured_since=2000.0
    )
    assert after == ContainerClock(first_start=100.0, last_busy=2000.0)


def test_a_saved_device_clock_resumes_from_the_restart():
    assert advance_device(200.0, busy=False, now=2010.0, measured_since=2000.0) == 2000.0
    assert advance_device(2005.0, busy=False, now=2010.0, measured_since=2000.0) == 2005.0


def test_busy_moves_last_busy_to_now_and_idle_leaves_it():
    clock = advance_container(None, started_at=100.0, busy=True, now=150.0)
    assert clock.last_busy == 150.0
    assert advance_container(clock, started_at=100.0, busy=False, now=200.0) == clock


def test_a_stop_and_start_keeps_the_first_start_and_grants_the_start_grace_again():
    before = ContainerClock(first_start=100.0, last_busy=150.0)
    after = advance_container(before, started_at=1000.0, busy=False, now=1010.0)
    assert after == ContainerClock(first_start=100.0, last_busy=1000.0)


def test_clocks_never_move_backwards():
    before = ContainerClock(first_start=100.0, last_busy=900.0)
    after = advance_container(before, started_at=300.0, busy=True, now=800.0)  # clock skew
    assert after == ContainerClock(first_start=100.0, last_busy=900.0)


def test_device_last_busy_starts_at_first_sight_and_follows_busy():
    assert advance_device(None, busy=False, now=10.0) == 10.0
    assert advance_device(10.0, busy=False, now=20.0) == 10.0
    assert advance_device(10.0, busy=True, now=30.0) == 30.0


def test_store_round_trip_and_atomic_write(tmp_path):
    store = ClockStore(tmp_path)
    book = ClockBook()
    book.observe_container("c1", started_at=100.0, busy=True, now=120.0)
    book.observe_device("MIG-1", busy=False, now=50.0)
    assert book.dirty
    store.save(book)
    assert not book.dirty
    assert [p.name for p in tmp_path.iterdir()] == ["exporter-clocks.json"]  # no temp file left
    loaded = store.load()
    assert loaded.containers == {"c1": ContainerClock(100.0, 120.0)}
    assert loaded.devices == {"MIG-1": 50.0}


def test_retain_forgets_removed_containers_only(tmp_path):
    book = ClockBook({"keep": ContainerClock(1, 2), "gone": ContainerClock(1, 2)})
    book.retain(["keep", "stopped-but-present"])
    assert set(book.containers) == {"keep"}
    assert book.dirty


def test_missing_state_file_is_an_empty_book(tmp_path):
    assert ClockStore(tmp_path / "nowhere").load().containers == {}


@pytest.mark.parametrize(
    "text, reason",
    [
        ("{not json", "not valid JSON"),
        ('{"version": 99}', "not a version 1 clock state"),
        ('{"version": 1, "containers": {"c": {"first_start": 1}}}', "malformed entry"),
    ],
)
def test_unreadable_state_names_the_file_and_reason(tmp_path, text, reason):
    (tmp_path / "exporter-clocks.json").write_text(text)
    with pytest.raises(ClockStateError, match=reason) as info:
        ClockStore(tmp_path).load()
    assert "exporter-clocks.json" in str(info.value)


def test_a_corrupt_state_file_is_set_aside_and_counted(tmp_path):
    (tmp_path / "exporter-clocks.json").write_text("{broken")
    errors = ErrorCounters()
    book = load_clocks(ClockStore(tmp_path), errors)
    assert book.containers == {}
    assert errors.values()["state"] == 1
    assert (tmp_path / "exporter-clocks.json.corrupt").read_text() == "{broken"


def test_saved_file_is_plain_json_a_person_can_read(tmp_path):
    store = ClockStore(tmp_path)
    book = ClockBook({"c1": ContainerClock(1.5, 2.5)})
    store.save(book)
    data = json.loads(store.path.read_text())
    assert data["containers"]["c1"] == {"first_start": 1.5, "last_busy": 2.5}
