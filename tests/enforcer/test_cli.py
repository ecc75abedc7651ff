"""`ds01 enforcer` as users run it: flags, refusing a bad token file, surviving SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from enforcer.cli import DEFAULT_LISTEN, build_parser, main
from tests.enforcer.conftest import GPU, REPO, alert_for, webhook
from tests.harness.waiting import eventually


def test_parser_defaults_and_flags():
    args = build_parser().parse_args(
        ["--token-file", "/t", "--dry-run", "--action-delay", "1.5s", "--workers", "2"]
    )

    assert args.token_file == "/t"
    assert args.dry_run is True
    assert args.action_delay == 1.5
    assert args.workers == 2
    assert args.listen is None  # the policy's services.enforcer_listen, 127.0.0.1:9102
    assert DEFAULT_LISTEN == "127.0.0.1:9102"
    assert build_parser().parse_args([]).retry_max == 30.0


def test_parser_rejects_bad_values(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--action-delay", "soon"])
    assert "expected a duration" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--workers", "0"])
    assert "must be at least 1" in capsys.readouterr().err


def test_every_flag_has_help():
    for action in build_parser()._actions:
        assert action.help, action.dest


@pytest.mark.parametrize("mode", [0o644, 0o660, 0o604])
def test_refuses_to_start_with_a_token_file_others_can_read(tmp_path, capsys, mode):
    token = tmp_path / "token"
    token.write_text("secret\n")
    token.chmod(mode)
    policy = tmp_path / "policy.yaml"
    policy.write_text("stop_grace: 5s\n")

    with pytest.raises(SystemExit) as exit_info:
        main(["--token-file", str(token), "--state-dir", str(tmp_path), "--policy", str(policy)])

    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "refusing to start" in err
    assert "accessible by group or others" in err
    assert f"chmod 600 {token}" in err
    assert "secret" not in err


def test_refuses_to_start_without_a_token_file(tmp_path, capsys):
    policy = tmp_path / "policy.yaml"
    policy.write_text("{}\n")
    with pytest.raises(SystemExit):
        main(["--token-file", str(tmp_path / "missing"), "--policy", str(policy)])
    assert "does not exist" in capsys.readouterr().err


def test_umbrella_command_dispatches_to_the_enforcer():
    result = subprocess.run(
        [sys.executable, "-m", "ds01.cli", "enforcer", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert "--token-file" in result.stdout


@pytest.mark.integration
def test_sigkill_between_ack_and_action_acts_after_restart(cli_enforcer, containers, deadlines):
    first = cli_enforcer("--action-delay", "10m")
    box = containers(gpus=[GPU])
    deadlines.past_idle(box)

    reply = first.post("alerts", webhook(alert_for(box)))
    assert reply.status_code == 200
    assert first.metric("ds01_enforcer_queue_depth") == 1
    first.extra["process"].send_signal(signal.SIGKILL)
    first.extra["process"].wait(10)
    box.reload()
    assert box.status == "running"
    assert first.records_for(box.id) == []

    second = cli_enforcer()

    [record] = second.wait_records(box.id)
    assert record["decision"] == "stopped"
    box.reload()
    assert box.status == "exited"
    # The depth gauge follows the journal on the worker's next pass.
    eventually(lambda: second.metric("ds01_enforcer_queue_depth") == 0, 10, "an empty queue")


@pytest.mark.integration
def test_sigterm_stops_cleanly_and_audit_log_is_0640(cli_enforcer, containers, deadlines):
    running = cli_enforcer("--dry-run")
    box = containers(gpus=[GPU])
    deadlines.past_idle(box)
    running.post("alerts", webhook(alert_for(box)))
    [record] = running.wait_records(box.id)
    assert record["dry_run"] is True

    process = running.extra["process"]
    process.send_signal(signal.SIGTERM)

    assert process.wait(30) == 0
    assert running.audit_path.stat().st_mode & 0o777 == 0o640


@pytest.mark.integration
def test_sighup_reloads_the_policy_and_refuses_a_bad_one(
    cli_enforcer, containers, deadlines, tmp_path
):
    running = cli_enforcer()
    process = running.extra["process"]
    policy_file = tmp_path / "policy.yaml"
    box = containers(gpus=[GPU])

    policy_file.write_text("stop_grace: soon\n")
    process.send_signal(signal.SIGHUP)
    eventually(
        lambda: running.metric("ds01_policy_reloads_total", result="refused") == 1,
        10,
        "the bad file refused",
    )
    log = (tmp_path / "enforcer-0.log").read_text()
    assert "policy reload refused" in log and "stop_grace" in log

    policy_file.write_text(
        f"stop_grace: 0s\nidle_warning: 0s\nprotected: {{names: [{box.name}]}}\n"
    )
    process.send_signal(signal.SIGHUP)
    eventually(
        lambda: running.metric("ds01_policy_reloads_total", result="applied") == 1,
        10,
        "the good file applied",
    )
    deadlines.past_idle(box)
    running.post("alerts", webhook(alert_for(box)))
    [record] = running.wait_records(box.id)
    assert record["decision"] == f"skipped: protected by policy (name {box.name}, made by root)"
    assert process.poll() is None
