"""The gpu-status command line: flags, URL resolution, --mine, exit codes, colour rules."""

from __future__ import annotations

import io
import json
import os
import pwd
import subprocess
import sys

import pytest

from ds01.clock import FrozenClock
from ds01.gpu_status import build_parser, main
from ds01.gpu_status.render import use_colour
from ds01.stack import free_port


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_parser_defaults(monkeypatch):
    monkeypatch.delenv("DS01_PROMETHEUS_URL", raising=False)
    args = build_parser().parse_args([])
    assert (args.mine, args.user, args.json, args.watch) == (False, None, False, False)
    assert args.interval == 2.0 and args.stale_after == 60.0 and args.color == "auto"


def test_mine_and_user_are_exclusive(capsys):
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["--mine", "--user", "bob"])
    assert caught.value.code == 2


def test_bad_duration_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--interval", "soon"])
    assert "expected a duration" in capsys.readouterr().err


def test_dead_prometheus_one_line_exit_2(capsys):
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["--prometheus-url", url]) == 2
    err = capsys.readouterr().err
    assert err == f"gpu-status: cannot query Prometheus at {url}: Connection refused\n"


def test_url_from_environment_then_policy(tmp_path, monkeypatch, capsys):
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("DS01_PROMETHEUS_URL", dead)
    assert main([]) == 2
    assert dead in capsys.readouterr().err
    monkeypatch.delenv("DS01_PROMETHEUS_URL")
    policy = tmp_path / "ds01.yaml"
    other = f"http://127.0.0.1:{free_port()}"
    policy.write_text(f"services: {{prometheus_url: '{other}'}}\n")
    assert main(["--policy", str(policy)]) == 2
    assert other in capsys.readouterr().err


def test_invalid_policy_is_a_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DS01_PROMETHEUS_URL", raising=False)
    policy = tmp_path / "ds01.yaml"
    policy.write_text("idle_timeout: soon\n")
    with pytest.raises(SystemExit) as caught:
        main(["--policy", str(policy)])
    assert caught.value.code == 2
    assert "idle_timeout" in capsys.readouterr().err


def test_mine_is_the_callers_login_name(answer, fixed_prometheus, monkeypatch):
    me = pwd.getpwuid(os.getuid()).pw_name
    for sample in answer["series"]:
        if sample["metric"].get("user") == "bob":
            sample["metric"]["user"] = me
    monkeypatch.setenv("USER", "alice")  # the environment does not decide who "mine" is
    url = fixed_prometheus(answer)
    out = io.StringIO()
    assert (
        main(
            ["--prometheus-url", url, "--mine", "--json"], clock=FrozenClock(answer["now"]), out=out
        )
        == 0
    )
    document = json.loads(out.getvalue())
    assert document["user_filter"] == me
    assert [d["containers"][0]["container"] for d in document["devices"]] == ["notebook-bob"]


def test_colour_rules():
    assert use_colour("auto", Tty(), env={})
    assert not use_colour("auto", Tty(), env={"NO_COLOR": "1"})
    assert not use_colour("auto", io.StringIO(), env={})
    assert use_colour("always", io.StringIO(), env={"NO_COLOR": "1"})
    assert not use_colour("never", Tty(), env={})


def test_watch_refreshes_and_survives_errors():
    url = f"http://127.0.0.1:{free_port()}"
    out = io.StringIO()
    code = main(
        ["--prometheus-url", url, "--watch", "--interval", "0.01", "--watch-count", "2"], out=out
    )
    assert code == 0
    assert out.getvalue().count("cannot query Prometheus") == 2


def test_console_script_entry_point():
    url = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from ds01.cli import gpu_status_main; sys.exit(gpu_status_main())",
            "--prometheus-url",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"gpu-status: cannot query Prometheus at {url}: Connection refused"
    ]
