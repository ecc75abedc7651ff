"""SIGHUP policy reload: a valid file takes effect, a bad one is refused with its key named."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry

from ds01.policy import load_policy
from ds01.policy_reload import PolicyReloader


def test_a_valid_file_is_applied_and_a_bad_one_refused_keeping_the_last_good(tmp_path, caplog):
    path = tmp_path / "ds01.yaml"
    path.write_text("idle_timeout: 30m\n")
    applied = []
    registry = CollectorRegistry()
    reloader = PolicyReloader(
        load_policy(path), path=str(path), apply=applied.append, registry=registry
    )

    path.write_text("idle_timeout: 45m\n")
    assert reloader.reload() is True
    assert [p.idle_timeout for p in applied] == [2700.0]

    path.write_text("idle_timeout: soon\n")
    with caplog.at_level(logging.ERROR, logger="ds01.policy_reload"):
        assert reloader.reload() is False
    assert "idle_timeout" in caplog.text and "last good policy stays" in caplog.text
    assert reloader.current.idle_timeout == 2700.0
    assert len(applied) == 1
    sample = registry.get_sample_value
    assert sample("ds01_policy_reloads_total", {"result": "applied"}) == 1
    assert sample("ds01_policy_reloads_total", {"result": "refused"}) == 1


def test_a_missing_file_is_refused_too(tmp_path):
    path = tmp_path / "ds01.yaml"
    path.write_text("idle_timeout: 30m\n")
    reloader = PolicyReloader(load_policy(path), path=str(path), apply=lambda _p: None)
    path.unlink()
    assert reloader.reload() is False
    assert reloader.current.idle_timeout == 1800.0
