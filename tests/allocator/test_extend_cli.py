"""`container extend` and `container usage`: parsing, and what `container ls` shows."""

from __future__ import annotations

import pytest

from allocator import container_cli


def test_extend_parser_takes_an_optional_duration_and_idle():
    parser = container_cli.build_parser()
    args = parser.parse_args(["extend", "job", "2h", "--idle"])
    assert (args.action, args.name, args.duration, args.idle) == ("extend", "job", "2h", True)
    bare = parser.parse_args(["extend", "job"])
    assert bare.duration is None and not bare.idle
    with pytest.raises(SystemExit):
        parser.parse_args(["extend"])
    assert parser.parse_args(["usage", "--json"]).json
    assert parser.parse_args(["history", "--usage", "--json"]).usage


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
