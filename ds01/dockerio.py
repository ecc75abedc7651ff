"""Docker client construction in one place, so every service honours --docker-host alike."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import docker

# The Docker SDK's scheme for a socket (unix, npipe, ssh): no HTTP proxy can sit on that path.
_SOCKET_SCHEME = "http+docker://"


def connect(docker_host: str | None = None, *, timeout: float = 30.0) -> docker.DockerClient:
    """A client for `docker_host` (a unix:// or tcp:// URL), or the environment's default."""
    if docker_host:
        client = docker.DockerClient(base_url=docker_host, timeout=int(timeout))
    else:
        client = docker.from_env(timeout=int(timeout))
    if client.api.base_url.startswith(_SOCKET_SCHEME):
        # requests reads the proxy variables and ~/.netrc before every call (about 40% of an
        # inspect's client CPU), and a socket uses neither; tcp:// keeps the environment's proxy.
        client.api.trust_env = False
    return client


class DockerLink:
    """The Docker client, made on first use: a service starts even while Docker is down, and
    its events follower keeps calling until Docker answers."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self._client: Any = None
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client
