"""/metrics bodies: the snapshot part rendered once, the health part fresh on every scrape."""

from __future__ import annotations

import gzip

import pytest

from exporter.exposition import DEFAULT_ACCEPT, Exposition
from exporter.health import ErrorCounters
from exporter.metrics import SnapshotCollector
from exporter.snapshot import Snapshot
from tests.exporter.helpers import parse, value


@pytest.fixture
def errors() -> ErrorCounters:
    return ErrorCounters()


@pytest.fixture
def exposition(errors) -> Exposition:
    metrics = SnapshotCollector(lambda: None, errors, version="t", backend="sim")
    return Exposition(metrics.health_metrics)


def snapshot(at: float) -> Snapshot:
    return Snapshot(timestamp=at, duration=0.1, backend="sim", devices=(), containers=())


def test_error_counters_are_fresh_on_every_scrape(exposition, errors):
    snap = snapshot(10.0)
    exposition.prepare(snap)
    before = parse(exposition.render(snap, None, None).data.decode())
    errors.add("docker", 3)
    after = parse(exposition.render(snap, None, None).data.decode())
    assert value(before, "ds01_exporter_collect_errors_total", source="docker") == 0
    assert value(after, "ds01_exporter_collect_errors_total", source="docker") == 3


def test_openmetrics_body_ends_with_exactly_one_eof(exposition):
    snap = snapshot(10.0)
    exposition.prepare(snap)
    body = exposition.render(snap, DEFAULT_ACCEPT, None)
    assert body.content_type.startswith("application/openmetrics-text")
    assert body.data.endswith(b"# EOF\n") and body.data.count(b"# EOF") == 1


def test_gzip_body_is_the_same_text(exposition):
    snap = snapshot(10.0)
    exposition.prepare(snap)
    plain = exposition.render(snap, DEFAULT_ACCEPT, None)
    packed = exposition.render(snap, DEFAULT_ACCEPT, "gzip, deflate")
    assert packed.gzipped and not plain.gzipped
    assert gzip.decompress(packed.data) == plain.data
