"""Each alert reaches the intended receiver: the cases of alertmanager/tests/routes.yml through
`amtool config routes test`, and every alert the rules can raise has a case."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from ds01.rulegen import RuleSettings, lifecycle_rules, operations_rules
from tests.rules.conftest import ALERTMANAGER_DIR

CASES = yaml.safe_load((ALERTMANAGER_DIR / "tests" / "routes.yml").read_text())


def _alert_rules() -> dict[str, dict]:
    settings = RuleSettings()
    return {
        rule["alert"]: rule
        for doc in (lifecycle_rules(settings), operations_rules(settings))
        for group in doc["groups"]
        for rule in group["rules"]
    }


def _routes_test(amtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`amtool config routes test` against the repository's alertmanager.yml."""
    return subprocess.run(
        [
            amtool,
            "config",
            "routes",
            "test",
            f"--config.file={ALERTMANAGER_DIR / 'alertmanager.yml'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_route(case, amtool):
    labels = [f"{key}={value}" for key, value in case["labels"].items()]
    result = _routes_test(amtool, f"--verify.receivers={','.join(case['receivers'])}", *labels)
    assert result.returncode == 0, f"{case['name']}: {result.stdout}{result.stderr}"


def test_every_alert_has_a_route_case_with_the_rules_labels():
    cases = {c["labels"]["alertname"]: c for c in CASES}
    for name, rule in _alert_rules().items():
        assert name in cases, f"no route case for {name}"
        labels = {k: str(v) for k, v in cases[name]["labels"].items()}
        assert rule["labels"].items() <= labels.items(), f"{name}: case labels differ from rule"


def test_an_unknown_alert_never_reaches_the_enforcer(amtool):
    result = _routes_test(amtool, "alertname=Anything")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "admin"
