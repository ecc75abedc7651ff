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


def require_postgres() -> None:
    from ds01.postgres_server import find_postgres_bindir

    if find_postgres_bindir() is None:
        missing("PostgreSQL is not installed (apt-get install postgresql)")


def require_cluster_stack() -> None:
    """What `ds01 up --nodes` starts: private dockerds (root), Prometheus, Alertmanager and
    PostgreSQL."""
    require_root("private dockerds")
    for binary in ("dockerd", "docker", "busybox", "prometheus"):
        require_binary(binary)
    require_binary("prometheus-alertmanager", "alertmanager")
    require_postgres()
