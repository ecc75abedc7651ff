"""Skip-or-fail for missing components: a laptop skips, CI (CI=true) fails."""

from __future__ import annotations

import os

import pytest

from ds01.stack import find_binary


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str) -> None:
    """Skip locally; with CI=true a missing component is a failure, not a skip."""
    if in_ci():
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def require_binary(name: str, *alternatives: str) -> str:
    path = find_binary(name, *alternatives)
    if path is None:
        missing(f"{name} is not installed")
    assert path is not None
    return path


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        missing(f"{what} needs root")
