"""Error counters start at 0 for every source; an outage is logged once, not every retry."""

from __future__ import annotations

import logging

from exporter.health import ERROR_SOURCES, Episode, ErrorCounters


def test_counters_start_at_zero_for_every_source():
    assert ErrorCounters().values() == {source: 0 for source in ERROR_SOURCES}
    assert set(ERROR_SOURCES) == {"docker", "extensions", "gpu", "keepalive", "state"}


def test_counters_only_grow():
    errors = ErrorCounters()
    errors.add("gpu", 3)
    errors.add("gpu", 0)
    errors.add("docker")
    assert errors.values()["gpu"] == 3 and errors.values()["docker"] == 1


def test_an_episode_logs_once_when_it_starts_and_once_when_it_ends(caplog):
    log = logging.getLogger("tests.exporter.health")
    episode = Episode(log, "thing")
    with caplog.at_level(logging.INFO, logger="tests.exporter.health"):
        episode.fail("down")
        episode.fail("still down")
        episode.ok()
        episode.ok()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "thing failing: down" in messages[0] and messages[1] == "thing recovered"
