"""The rule generator: policy values land in the rules, the checked-in files are its render, and
promtool accepts the rules and passes the unit tests under prometheus/tests/."""

from __future__ import annotations

import dataclasses
import subprocess

import pytest
import yaml

from ds01.policy import default_policy, load_policy
from ds01.rulegen import (
    RULE_FILES,
    RuleSettings,
    build_parser,
    lifecycle_rules,
    main,
    operations_rules,
    prom_duration,
    recording_rules,
    render_rule_files,
)
from tests.rules.conftest import PROMETHEUS_DIR


def _rules(doc: dict) -> dict[str, dict]:
    return {r.get("alert") or r["record"]: r for g in doc["groups"] for r in g["rules"]}


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (1, "1s"),
        (90, "1m30s"),
        (600, "10m"),
        (3600, "1h"),
        (172800, "2d"),
        (0.5, "500ms"),
    ],
)
def test_prom_duration(seconds, text):
    assert prom_duration(seconds) == text


def test_prom_duration_rejects_infinite_and_negative():
    for bad in (float("inf"), -1):
        with pytest.raises(ValueError):
            prom_duration(bad)


def test_checked_in_rule_files_equal_the_render_of_the_default_policy():
    rendered = render_rule_files(RuleSettings.from_policy(default_policy()))
    assert sorted(rendered) == sorted(RULE_FILES)
    for name, text in rendered.items():
        checked_in = (PROMETHEUS_DIR / "rules" / name).read_text()
        assert checked_in == text, f"prometheus/rules/{name} drifted: run python -m ds01.rulegen"


def test_policy_timings_drive_the_rules(tmp_path):
    policy_file = tmp_path / "ds01.yaml"
    policy_file.write_text(
        "idle_warning: 1m\nruntime_warning: 5m\nunmanaged_gpu: {grace: 90s}\n"
        "keep_alive: {path: /workspace/.stay, max_age: 2h}\n"
    )
    rules = _rules(lifecycle_rules(RuleSettings.from_policy(load_policy(policy_file))))
    assert "time() + 60\n" in rules["GPUContainerIdleWarning"]["expr"]
    assert "< time()\n" in rules["GPUContainerIdle"]["expr"]
    assert "time() + 300\n" in rules["GPUContainerRuntimeWarning"]["expr"]
    assert rules["GPUContainerUnmanaged"]["for"] == "1m30s"
    summary = rules["GPUContainerIdleWarning"]["annotations"]["summary"]
    assert "touch /workspace/.stay inside it (valid 2h)" in summary


def test_every_lifecycle_alert_carries_the_contract_labels():
    rules = _rules(lifecycle_rules(RuleSettings()))
    expected = {
        "GPUContainerIdleWarning": ("warning", "notify", "idle"),
        "GPUContainerIdle": ("critical", "stop", "idle"),
        "GPUContainerRuntimeWarning": ("warning", "notify", "max_runtime"),
        "GPUContainerMaxRuntime": ("critical", "stop", "max_runtime"),
        "GPUContainerUnmanaged": ("critical", "stop", "unmanaged"),
    }
    assert set(rules) == set(expected)
    for name, (severity, action, reason) in expected.items():
        rule = rules[name]
        assert rule["labels"] == {"severity": severity, "action": action, "reason": reason}
        assert "container_id, container, user, group, type" in rule["expr"]
        summary = rule["annotations"]["summary"]
        assert "(ds01_time | toTime).Format" in summary.replace("$value", "ds01_time"), (
            f"{name}: the summary must say when, as a time people read"
        )
        assert "/home or /workspace" in summary


def test_lifecycle_alerts_need_a_fresh_exporter_and_unmanaged_needs_the_allocator():
    rules = _rules(lifecycle_rules(RuleSettings(exporter_stale_after=30)))
    for rule in rules.values():
        assert "time() - ds01_exporter_last_collect_timestamp_seconds < 30" in rule["expr"]
    unmanaged = rules["GPUContainerUnmanaged"]["expr"]
    assert 'up{job="ds01-allocator"} == 1' in unmanaged
    assert "ds01_allocator_queue_length" in unmanaged


def test_unmanaged_action_notify_warns_and_ignore_drops_the_rule():
    notify = _rules(lifecycle_rules(RuleSettings(unmanaged_action="notify")))
    assert notify["GPUContainerUnmanaged"]["labels"] == {
        "severity": "warning",
        "action": "notify",
        "reason": "unmanaged",
    }
    assert "GPUContainerUnmanaged" not in _rules(
        lifecycle_rules(RuleSettings(unmanaged_action="ignore"))
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"unmanaged_action": "kill"}, "unmanaged_action"),
        ({"idle_warning": -1.0}, "idle_warning"),
        ({"runtime_warning": float("inf")}, "runtime_warning"),
        ({"exporter_stale_after": 0.0}, "exporter_stale_after"),
        ({"usage_interval": 0.0}, "usage_interval"),
    ],
)
def test_bad_settings_are_refused_with_the_field_name(changes, message):
    with pytest.raises(ValueError, match=message):
        RuleSettings(**changes)


def test_the_usage_interval_sets_the_group_interval_and_the_hours_per_sample():
    groups = recording_rules(RuleSettings(usage_interval=15.0))["groups"]
    usage = next(g for g in groups if g["name"] == "ds01-usage")
    assert usage["interval"] == "15s"
    held = next(r for r in usage["rules"] if r["record"] == "ds01:user_gpu_held:gpu_hours")
    assert held["expr"].rstrip().endswith("* 15 / 3600")


def test_cli_writes_the_three_files(tmp_path):
    policy_file = tmp_path / "ds01.yaml"
    policy_file.write_text("idle_warning: 2m\n")
    assert main(["--policy", str(policy_file), "--out", str(tmp_path / "out")]) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted(RULE_FILES)
    lifecycle = yaml.safe_load((tmp_path / "out" / "ds01-lifecycle.yml").read_text())
    assert "time() + 120\n" in _rules(lifecycle)["GPUContainerIdleWarning"]["expr"]


def test_cli_rejects_an_invalid_policy_naming_the_key(tmp_path, capsys):
    policy_file = tmp_path / "ds01.yaml"
    policy_file.write_text("idle_warning: soon\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["--policy", str(policy_file), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "idle_warning" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_parser_requires_out_and_parses_durations():
    args = build_parser().parse_args(["--out", "d", "--exporter-stale-after", "30s"])
    assert args.exporter_stale_after == 30.0
    with pytest.raises(SystemExit):
        build_parser().parse_args([])


def test_promtool_accepts_compressed_rules(tmp_path, promtool):
    policy = dataclasses.replace(default_policy(), idle_warning=1.0, runtime_warning=2.0)
    settings = RuleSettings.from_policy(policy, unmanaged_grace=3.0, exporter_stale_after=5.0)
    paths = []
    for name, text in render_rule_files(settings).items():
        (tmp_path / name).write_text(text)
        paths.append(str(tmp_path / name))
    result = _run(promtool, "check", "rules", *paths)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules_on_checked_in_files(promtool):
    paths = [str(PROMETHEUS_DIR / "rules" / name) for name in RULE_FILES]
    result = _run(promtool, "check", "rules", *paths)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass(promtool):
    """prometheus/tests/*.yml: warnings at the exact minute, busy, keep-alive, stale, unmanaged."""
    files = sorted(str(p) for p in (PROMETHEUS_DIR / "tests").glob("*.yml"))
    assert len(files) >= 5
    result = _run(promtool, "test", "rules", *files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_cover_every_rule():
    covered: set[str] = set()
    for path in (PROMETHEUS_DIR / "tests").glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["tests"]:
            covered |= {t["alertname"] for t in group.get("alert_rule_test", [])}
            covered |= {t["expr"] for t in group.get("promql_expr_test", [])}
    settings = RuleSettings()
    names = set()
    for doc in (lifecycle_rules(settings), operations_rules(settings), recording_rules(settings)):
        names |= set(_rules(doc))
    assert names <= covered, f"rules without a promtool test: {sorted(names - covered)}"


def test_every_aggregation_and_join_keeps_the_node_label():
    """One Prometheus serves many nodes (issue 18): a `by (...)` without `node` would merge two
    nodes' series, an `on(...)` without it would join them (prometheus/tests/nodes.yml shows it)."""
    import re

    settings = RuleSettings()
    grouping = re.compile(r"\b(by|on)\s*\(([^)]*)\)")
    seen = 0
    for doc in (lifecycle_rules(settings), operations_rules(settings), recording_rules(settings)):
        for name, rule in _rules(doc).items():
            for keyword, labels in grouping.findall(rule["expr"]):
                seen += 1
                names = [label.strip() for label in labels.split(",")]
                assert "node" in names, f"{name}: `{keyword} ({labels})` drops the node label"
    assert seen > 20
