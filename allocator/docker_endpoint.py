"""Where the wrapper's real docker talks: the gateway, unless the user chose a Docker host.

Users who never set DOCKER_HOST (a shell without /etc/profile.d, cron, an IDE) still reach
Docker through the gateway when its socket is there; a user's own choice (DOCKER_HOST,
DOCKER_CONTEXT, `-H`, `--context`, `docker context use`) is left alone.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

GATEWAY_SOCKET_ENV = "DS01_GATEWAY_SOCKET"
DEFAULT_GATEWAY_SOCKET = "/run/ds01/docker.sock"  # the policy's default gateway.socket
_HOST_FLAGS = ("-H", "--host", "-c", "--context")


def global_options(argv: Sequence[str]) -> list[str]:
    """The options before docker's subcommand (`docker -H x --debug ps` -> -H x --debug)."""
    head: list[str] = []
    for token in argv:
        if not token.startswith("-") or token == "-":
            break
        head.append(token)
    return head


def names_a_host(argv: Sequence[str]) -> bool:
    """True when the command line picks its own daemon (-H, --host, -c, --context)."""
    for token in global_options(argv):
        name = token.partition("=")[0]
        if name in _HOST_FLAGS or (token[:2] in ("-H", "-c") and not token.startswith("--")):
            return True
    return False


def current_context(environ: Mapping[str, str]) -> str:
    """The context `docker context use` stored in the user's config ('' when none)."""
    folder = environ.get("DOCKER_CONFIG") or os.path.join(environ.get("HOME", ""), ".docker")
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return ""
    value = data.get("currentContext") if isinstance(data, dict) else None
    return value if isinstance(value, str) and value != "default" else ""


def user_chose_a_host(argv: Sequence[str], environ: Mapping[str, str]) -> bool:
    if environ.get("DOCKER_HOST") or environ.get("DOCKER_CONTEXT"):
        return True
    return names_a_host(argv) or bool(current_context(environ))


def gateway_socket_path(environ: Mapping[str, str]) -> tuple[str, str]:
    """(socket path, warning): $DS01_GATEWAY_SOCKET, else the policy's gateway.socket.

    An unreadable or invalid policy falls back to the default path, with a warning to show.
    The policy code is imported here, not at the top: most docker commands never need it.
    """
    explicit = environ.get(GATEWAY_SOCKET_ENV)
    if explicit:
        return explicit, ""
    from ds01.policy import PolicyError, load_policy, policy_path

    default = DEFAULT_GATEWAY_SOCKET
    path = environ.get("DS01_POLICY") or policy_path()
    if "DS01_POLICY" not in environ and not Path(path).exists():
        return default, ""
    try:
        policy = load_policy(path)
    except (PolicyError, OSError) as exc:
        return default, f"{exc}; looking for the gateway at {default}"
    return policy.gateway.socket, ""


def is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def gateway_host(
    argv: Sequence[str],
    environ: Mapping[str, str],
    *,
    socket_path: Callable[[Mapping[str, str]], tuple[str, str]] = gateway_socket_path,
    exists: Callable[[str], bool] = is_socket,
) -> tuple[str | None, str]:
    """(DOCKER_HOST to set, warning): the gateway's URL when the user chose no host and the
    gateway's socket is there; None to leave docker's own choice alone."""
    if user_chose_a_host(argv, environ):
        return None, ""
    path, warning = socket_path(environ)
    return (f"unix://{path}" if exists(path) else None), warning
