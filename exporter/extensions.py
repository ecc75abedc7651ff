"""Reads the deadline extensions the allocator granted (its atomically written totals file).

The exporter adds them to the deadlines it publishes, so rules, warnings and gpu-status all
follow an extension without knowing about it. A missing file means none were granted; a file
that cannot be read or parsed is counted and the last good reading is kept.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .health import ErrorCounters

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GrantedExtension:
    """Seconds added to one container's runtime and idle deadlines."""

    runtime: float = 0.0
    idle: float = 0.0


NONE = GrantedExtension()


def parse_totals(data: object) -> dict[str, GrantedExtension]:
    """The allocator's totals document; ValueError names what is wrong."""
    if not isinstance(data, dict) or not isinstance(data.get("containers"), dict):
        raise ValueError("expected an object with a 'containers' object")
    result = {}
    for container_id, entry in data["containers"].items():
        if not isinstance(entry, dict):
            raise ValueError(f"containers.{container_id}: expected an object")
        values = []
        for kind in ("runtime", "idle"):
            value = entry.get(kind, 0.0)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"containers.{container_id}.{kind}: expected seconds >= 0")
            values.append(float(value))
        result[str(container_id)] = GrantedExtension(*values)
    return result


class ExtensionTotals:
    """The current totals, re-read only when the file changed."""

    def __init__(self, path: str | os.PathLike[str] | None, errors: ErrorCounters) -> None:
        self.path = Path(path) if path else None
        self._errors = errors
        self._seen: tuple[int, int] | None = None
        self._totals: dict[str, GrantedExtension] = {}

    def current(self) -> Mapping[str, GrantedExtension]:
        if self.path is None:
            return {}
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._seen, self._totals = None, {}
            return self._totals
        except OSError as exc:
            self._failed(exc)
            return self._totals
        key = (st.st_mtime_ns, st.st_size)
        if key != self._seen:
            try:
                self._totals = parse_totals(json.loads(self.path.read_text()))
                self._seen = key
            except (OSError, ValueError) as exc:
                self._failed(exc)
        return self._totals

    def _failed(self, exc: Exception) -> None:
        self._errors.add("extensions")
        logger.warning(
            "extensions file %s unusable (keeping the last good one): %s", self.path, exc
        )
