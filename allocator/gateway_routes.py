"""Which rule applies to a Docker API request (pure): pass it, check ownership, or rewrite it.

The Docker API is large; the gateway only needs to know, per endpoint, whether it touches one
container (ownership), creates something (rewrite), lists or prunes across users (scope), or is
an admin's business (swarm, plugins). Everything else is shared state users may use freely.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

from ds01.containers import LABEL_USER

_VERSION = re.compile(r"^/v\d+(\.\d+)?(?=/)")

PASS = "pass"  # forwarded as it is
CREATE = "create"  # POST /containers/create: inspected and rewritten
CONTAINER = "container"  # one container: the caller must own it
EXEC = "exec"  # one exec instance: the caller must own its container
COMMIT = "commit"  # POST /commit?container=…: owner of that container
LIST = "list"  # GET /containers/json: maybe scoped to the caller
SCOPE = "scope"  # prune: scoped to the caller's own objects
VOLUME_CREATE = "volume_create"  # checked for host-path bind options, stamped with the owner
NETWORK_CREATE = "network_create"  # stamped with the owner
VOLUME = "volume"  # one named volume (removal needs its owner)
ADMIN = "admin"  # admins only (users: read-only requests pass)

_ADMIN_PREFIXES = ("swarm", "services", "nodes", "tasks", "secrets", "configs", "plugins")
_SHARED_PREFIXES = (
    "_ping",
    "version",
    "info",
    "events",
    "system",
    "auth",
    "distribution",
    "images",
    "build",
    "session",
    "grpc",
    "volumes",
    "networks",
)
READ_ONLY = ("GET", "HEAD")


class Refusal(Exception):
    """A rule said no: the client gets a Docker-style error; the connection goes on or closes."""

    def __init__(self, status: int, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.close = status, message, close


@dataclass(frozen=True)
class Route:
    kind: str
    target: str = ""  # container or exec id/name; for COMMIT the container


def strip_version(path: str) -> tuple[str, str]:
    """('/v1.41', '/containers/json') for a versioned path, ('', path) for a bare one."""
    match = _VERSION.match(path)
    if match is None:
        return "", path
    return match.group(0), path[match.end() :]


def route(method: str, target: str) -> Route:
    """The rule for one request line (method and request target)."""
    parts = urlsplit(target)
    _, path = strip_version(parts.path)
    words = [w for w in path.split("/") if w]
    if not words:
        return Route(PASS)
    head = words[0]
    if head == "containers":
        return _container_route(method, words)
    if head == "exec" and len(words) >= 2:
        return Route(EXEC, words[1])
    if head == "commit" and method == "POST":
        query = dict(parse_qsl(parts.query))
        return Route(COMMIT, query.get("container", ""))
    if head in ("volumes", "networks") and len(words) == 2 and method == "POST":
        if words[1] == "create":
            return Route(VOLUME_CREATE if head == "volumes" else NETWORK_CREATE)
        if words[1] == "prune":
            return Route(SCOPE)
    if head == "volumes" and len(words) == 2:
        return Route(VOLUME, words[1])
    if head in _SHARED_PREFIXES:
        return Route(PASS)
    if head in _ADMIN_PREFIXES:
        return Route(ADMIN)
    return Route(ADMIN)  # unknown: admins only, read-only for users


def _container_route(method: str, words: list[str]) -> Route:
    if len(words) == 1:
        return Route(ADMIN)
    second = words[1]
    if len(words) == 2 and second == "create" and method == "POST":
        return Route(CREATE)
    if len(words) == 2 and second == "json" and method in READ_ONLY:
        return Route(LIST)
    if len(words) == 2 and second == "prune" and method == "POST":
        return Route(SCOPE)
    return Route(CONTAINER, second)


def with_owner_filter(target: str, user: str) -> str:
    """The target with `label=ds01.user=<user>` added to its `filters` query parameter."""
    parts = urlsplit(target)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    label = f"{LABEL_USER}={user}"
    filters: dict = {}
    rest = []
    for key, value in pairs:
        if key == "filters":
            try:
                loaded = json.loads(value) if value else {}
            except ValueError:
                loaded = {}
            filters = loaded if isinstance(loaded, dict) else {}
        else:
            rest.append((key, value))
    current = filters.get("label")
    if isinstance(current, dict):  # the old map form: {"label": {"a=b": true}}
        current = {**current, label: True}
    else:
        current = [*(current or []), label]
    filters["label"] = current
    rest.append(("filters", json.dumps(filters, separators=(",", ":"))))
    query = urlencode(rest)
    return f"{parts.path}?{query}"


_CLIENT_LABELS = ("com.docker.compose.", "devcontainer.")


def finds_by_client_labels(target: str) -> bool:
    """A list filtered on compose or dev-container labels: a tool looking for *its* containers.

    Two users' compose projects in folders of the same name share a project label; scoped to
    the caller, each user's compose only ever finds their own containers.
    """
    for key, value in parse_qsl(urlsplit(target).query):
        if key != "filters":
            continue
        try:
            labels = (json.loads(value) or {}).get("label") or []
        except (ValueError, AttributeError):
            return False
        return any(str(label).startswith(_CLIENT_LABELS) for label in labels)
    return False
