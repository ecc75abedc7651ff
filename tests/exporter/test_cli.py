"""`ds01 exporter` flags: defaults, units, and clear errors for bad input."""

from __future__ import annotations

import pytest

from exporter.cli import build_parser, main, open_gpu_backend


def test_defaults():
    args = build_parser().parse_args([])
    assert args.collect_interval == 5.0
    assert args.keepalive_interval == 60.0
    assert args.docker_retry_interval is None
    assert args.listen is None and args.gpu_backend is None and not args.once


def test_durations_accept_units():
    args = build_parser().parse_args(
        [
            "--collect-interval",
            "500ms",
            "--keepalive-interval",
            "2m",
            "--docker-retry-interval",
            "3",
        ]
    )
    assert (args.collect_interval, args.keepalive_interval, args.docker_retry_interval) == (
        0.5,
        120.0,
        3.0,
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--collect-interval", "0s"], "must be longer than 0"),
        (["--collect-interval", "soon"], "expected a duration"),
        (["--gpu-backend", "cuda"], "invalid choice"),
    ],
)
def test_bad_flags_exit_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_help_names_units_and_defaults(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for fragment in ("default 5s", "default 60s", "127.0.0.1:9101", "--sim-state"):
        assert fragment in text


def run_main(argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_invalid_policy_is_refused_naming_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("busy_threshold: 7\n")
    err = run_main([f"--policy={bad}", f"--state-dir={tmp_path}", "--once"], capsys)
    assert "busy_threshold" in err


def test_bad_listen_address_is_refused(tmp_path, policy_file, capsys):
    err = run_main(
        [f"--policy={policy_file}", f"--state-dir={tmp_path}", "--listen", "9101"], capsys
    )
    assert "--listen" in err and "HOST:PORT" in err


def test_nvml_backend_without_nvml_is_refused(tmp_path, policy_file, capsys):
    err = run_main(
        [f"--policy={policy_file}", f"--state-dir={tmp_path}", "--gpu-backend", "nvml"], capsys
    )
    assert "--gpu-backend nvml" in err


def test_auto_backend_falls_back_to_sim_without_a_gpu(tmp_path):
    backend = open_gpu_backend("auto", None, str(tmp_path / "sim.json"))
    assert backend.name == "sim"
    assert len(backend.devices()) == 5
