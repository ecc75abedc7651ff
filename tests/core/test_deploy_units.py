"""The systemd units under deploy/ start our services with flags those services accept."""

from __future__ import annotations

import importlib
import shlex
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
SERVICES = {"exporter": "exporter.cli", "enforcer": "enforcer.cli", "allocator": "allocator.cli"}


def exec_start(unit: Path) -> list[str]:
    for line in unit.read_text().splitlines():
        if line.startswith("ExecStart="):
            return shlex.split(line.removeprefix("ExecStart="))
    raise AssertionError(f"{unit.name} has no ExecStart")


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_unit_flags_parse(service):
    argv = exec_start(UNITS / f"ds01-{service}.service")
    assert argv[0].endswith("/ds01") and argv[1] == service
    parser = importlib.import_module(SERVICES[service]).build_parser()
    args = parser.parse_args(argv[2:])
    assert args.policy == "/etc/ds01/ds01.yaml"


@pytest.mark.parametrize("unit", sorted(UNITS.glob("*.service")), ids=lambda p: p.name)
def test_units_are_hardened(unit):
    text = unit.read_text()
    for option in ("NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes"):
        assert option in text, f"{unit.name} lacks {option}"
