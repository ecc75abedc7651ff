"""`container extend` and `container usage`: parsing, and what `container ls` shows."""

from __future__ import annotations

import pytest

from allocator import container_cli
from allocator.container_cli import container_timing


def test_extend_parser_takes_an_optional_duration_and_idle():
    parser = container_cli.build_parser()
    args = parser.parse_args(["extend", "job", "2h", "--idle"])
    assert (args.action, args.name, args.duration, args.idle) == ("extend", "job", "2h", True)
    bare = parser.parse_args(["extend", "job"])
    assert bare.duration is None and not bare.idle
    with pytest.raises(SystemExit):
        parser.parse_args(["extend"])
    assert parser.parse_args(["usage", "--json"]).json


def test_container_ls_marks_an_extended_deadline():
    entry = {
        "container_id": "abc",
        "last_busy": 1000.0,
        "idle_deadline": 99999.0,
        "runtime_deadline": 5000.0,
        "runtime_deadline_reason": "extended",
    }
    _, stops = container_timing({"containers": [entry]}, "abc", now=1600.0)
    assert stops.endswith("max runtime, extended)")
    plain = dict(entry, runtime_deadline_reason="timeout")
    _, stops = container_timing({"containers": [plain]}, "abc", now=1600.0)
    assert stops.endswith("max runtime)")


def test_extend_without_an_allocator_says_so(capsys, tmp_path):
    code = container_cli.main(["--socket", str(tmp_path / "none.sock"), "extend", "job", "1h"])
    assert code == 1
    assert "container extend:" in capsys.readouterr().err


def test_usage_without_prometheus_names_the_url(capsys, tmp_path):
    code = container_cli.main(
        [
            "--socket",
            str(tmp_path / "none.sock"),
            "usage",
            "--prometheus-url",
            "http://127.0.0.1:9",
        ]
    )
    assert code == 1
    assert "cannot query Prometheus at http://127.0.0.1:9" in capsys.readouterr().err
