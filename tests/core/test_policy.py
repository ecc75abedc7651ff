"""Policy loading: every bad input names the file, the key path and the reason."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ds01.cli import main as ds01_main
from ds01.policy import PolicyError, load_policy

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "ds01.example.yaml"
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ds01.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_example_file_loads_with_design_defaults():
    policy = load_policy(EXAMPLE)
    assert policy.idle_timeout == 1800
    assert policy.gpu_wait == 180
    assert policy.allocation_history == 30 * 86400
    assert policy.groups["faculty"].idle_timeout == 3600
    assert policy.groups["admin"].max_gpus is None
    assert policy.container_types == {
        "ds01": None,
        "devcontainer": 7 * 86400,
        "compose": 3 * 86400,
        "docker": 2 * 86400,
    }


def test_limits_resolve_group_type_and_timeouts(tmp_path):
    policy = load_policy(
        write(
            tmp_path,
            """
            users: {alice: student, frank: faculty}
            """,
        )
    )
    alice = policy.limits_for("alice", "ds01", NOW)
    assert (alice.group, alice.max_gpus, alice.idle_timeout, alice.max_runtime) == (
        "student",
        2,
        1800,
        86400,
    )
    frank = policy.limits_for("frank", "compose", NOW)
    assert (frank.group, frank.idle_timeout, frank.max_runtime) == ("faculty", 3600, 3 * 86400)
    stranger = policy.limits_for("nobody-known", "docker", NOW)
    assert (stranger.group, stranger.max_runtime, stranger.stop_grace) == ("student", 2 * 86400, 60)


def test_exemption_in_force_until_end_of_day(tmp_path):
    policy = load_policy(
        write(
            tmp_path,
            """
            exemptions:
              - {user: carol, from: [idle], until: 2027-01-31, reason: thesis deadline}
            """,
        )
    )
    during = policy.limits_for("carol", "ds01", datetime(2027, 1, 31, 23, 59, tzinfo=UTC))
    after = policy.limits_for("carol", "ds01", datetime(2027, 2, 1, 0, 0, tzinfo=UTC))
    assert during.idle_exempt and not during.runtime_exempt
    assert during.exemptions[0].reason == "thesis deadline"
    assert not after.idle_exempt
    assert not policy.limits_for("dave", "ds01", NOW).idle_exempt


def test_protected_names():
    policy = load_policy(EXAMPLE)
    assert "ds01-prometheus" in policy.protected_names
    assert "alice-train" not in policy.protected_names


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("groups:\n  student: {max_gpu: 2}\n", "groups.student.max_gpu", "unknown key"),
        ("idle_timeout: 30 minutes\n", "idle_timeout", "expected a duration"),
        ("users: {alice: wizards}\n", "users.alice", "unknown group"),
        ("default_group: wizards\n", "default_group", "unknown group"),
        ("groups:\n  student: {max_gpus: -1}\n", "groups.student.max_gpus", ">= 0"),
        ("stop_grace: -5s\n", "stop_grace", "expected a duration"),
        ("busy_threshold: 1.5\n", "busy_threshold", "between 0 and 1"),
        ("allocation_history: forever\n", "allocation_history", "expected a duration"),
        ("idle_timeout: 30m: 1h\n", "line 1", "YAML syntax error"),
        ("colour: blue\n", "colour", "unknown key"),
        ("exemptions:\n  - {user: c, from: [sleep], reason: x}\n", "exemptions[0].from", "list of"),
        ("gpu: {backend: cuda}\n", "gpu.backend", "auto, nvml or sim"),
    ],
)
def test_invalid_policy_names_key_and_reason(tmp_path, text, key, reason):
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    message = str(caught.value)
    assert message.startswith(str(path))
    assert key in message
    assert reason in message


def test_missing_file(tmp_path):
    with pytest.raises(PolicyError, match="file not found"):
        load_policy(tmp_path / "absent.yaml")


def test_check_config_exit_codes(tmp_path, capsys):
    assert ds01_main(["check-config", str(EXAMPLE)]) == 0
    assert "group student: max_gpus 2" in capsys.readouterr().out
    bad = write(tmp_path, "groups:\n  student: {max_gpus: many}\n")
    assert ds01_main(["check-config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "groups.student.max_gpus" in err and str(bad) in err
