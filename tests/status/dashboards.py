"""Read the Grafana dashboards as data: every panel and variable query, with Grafana's variables
replaced by the values a test chooses (so each query can be run against a real Prometheus)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "grafana" / "dashboards"
PROVISIONING = ROOT / "grafana" / "provisioning"
BUILTIN = ("__range", "__range_s", "__range_ms", "__interval", "__interval_ms", "__rate_interval")
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_LABEL_VALUES = re.compile(r"^label_values\((?:(.+),\s*)?(\w+)\)$")


@dataclass(frozen=True)
class Query:
    dashboard: str
    where: str  # panel title / refId, or "variable <name>"
    expr: str
    instant: bool


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # panels inside collapsed rows


def variable_expr(variable: Mapping[str, Any]) -> str:
    query = variable.get("query")
    return query.get("query", "") if isinstance(query, Mapping) else str(query or "")


def queries(name: str, dashboard: Mapping[str, Any]) -> Iterator[Query]:
    """Every PromQL query of a dashboard: panel targets and query variables."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield Query(
                name,
                f"panel {panel.get('title')!r} {target.get('refId')}",
                target.get("expr", ""),
                bool(target.get("instant")) and not target.get("range"),
            )
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            yield Query(name, f"variable {variable['name']}", variable_expr(variable), True)


def used_variables(expr: str) -> set[str]:
    return {a or b for a, b in _VARIABLE.findall(expr)}


def substitute(expr: str, values: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"no test value for ${name} in {expr}")
        return values[name]

    return _VARIABLE.sub(replace, expr)


def label_values(expr: str) -> tuple[str, str] | None:
    """`label_values(metric, label)` -> (series selector, label); None for plain PromQL."""
    match = _LABEL_VALUES.match(expr.strip())
    return None if match is None else ((match.group(1) or "").strip(), match.group(2))
