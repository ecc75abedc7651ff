"""The incremental renderer writes what prometheus-client writes, and only redoes what changed."""

from __future__ import annotations

import gzip
import math
from dataclasses import replace

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from ds01.containers import ContainerFacts
from exporter.metrics import SnapshotMetrics
from exporter.snapshot import ContainerState, DeviceState, Snapshot
from exporter.textformat import OPENMETRICS, TEXT, SnapshotText


def container(n: int, device_uuid: str, *, name: str | None = None, busy_at: float = 4990.0):
    facts = ContainerFacts(
        f"{n:064x}",
        name or f"job-{n}",
        "pytorch:2",
        "docker",
        f"user{n}",
        n % 2 == 0,
        f"a-{n}" if n % 2 == 0 else "",
        (device_uuid,),
        True,
        100.0,
        90.0,
    )
    deadline = math.inf if n % 3 == 0 else busy_at + 1800
    return ContainerState(facts, "student", n % 2 == 1, 100.0, busy_at, n % 3 == 0, deadline,
                          "keep_alive" if n % 3 == 0 else "idle", 172900.0, "timeout")  # fmt: skip


@pytest.fixture
def snapshot(sim_inventory) -> Snapshot:
    odd = 'we"ird\\name\nwith newline'  # label values a user chose: escaped, never trusted
    states = [container(n, sim_inventory[n % len(sim_inventory)].device_uuid) for n in range(6)]
    states.append(container(99, sim_inventory[0].device_uuid, name=odd))
    devices = tuple(
        DeviceState(
            d,
            0.5 if i % 2 else None,
            i if i % 3 else None,
            2**30 * i or None,
            i % 2 == 1,
            4000.0 + i,
        )  # fmt: skip
        for i, d in enumerate(sim_inventory)
    )
    return Snapshot(5000.0, 0.01, "sim", devices, tuple(states))


def reference(snapshot: Snapshot, fmt: str) -> bytes:
    metrics = SnapshotMetrics(lambda: snapshot)
    if fmt == OPENMETRICS:
        return generate_openmetrics(metrics).removesuffix(b"# EOF\n")
    return generate_latest(metrics)


@pytest.mark.parametrize("fmt", [TEXT, OPENMETRICS])
def test_the_text_is_what_prometheus_client_writes(snapshot, fmt):
    rendered = SnapshotText().render(snapshot)
    assert rendered.plain(fmt) == reference(snapshot, fmt)
    assert gzip.decompress(rendered.gzipped(fmt)) == reference(snapshot, fmt)


@pytest.mark.parametrize("fmt", [TEXT, OPENMETRICS])
def test_an_empty_exporter_writes_the_families_without_samples(fmt):
    rendered = SnapshotText().render(None)
    assert rendered.plain(fmt) == reference(None, fmt)


def test_a_changed_value_is_rendered_and_the_unchanged_families_are_reused(snapshot):
    text = SnapshotText()
    first = text.render(snapshot)
    moved = list(snapshot.containers)
    moved[1] = replace(moved[1], last_busy=5005.0)
    second_snapshot = replace(snapshot, timestamp=5005.0, containers=tuple(moved))

    second = text.render(second_snapshot)

    assert second.plain(TEXT) == reference(second_snapshot, TEXT)
    changed = [a is not b for a, b in zip(first.blocks, second.blocks, strict=True)]
    assert sum(changed) == 1  # only ds01_container_last_busy_timestamp_seconds


def test_containers_that_leave_and_come_back_are_rendered_right(snapshot):
    text = SnapshotText()
    text.render(snapshot)
    fewer = replace(snapshot, containers=snapshot.containers[2:])
    assert text.render(fewer).plain(TEXT) == reference(fewer, TEXT)
    assert text.render(snapshot).plain(OPENMETRICS) == reference(snapshot, OPENMETRICS)
