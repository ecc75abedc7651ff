"""Docker client construction in one place, so every service honours --docker-host alike."""

from __future__ import annotations

import docker


def connect(docker_host: str | None = None, *, timeout: float = 30.0) -> docker.DockerClient:
    """A client for `docker_host` (a unix:// or tcp:// URL), or the environment's default."""
    if docker_host:
        return docker.DockerClient(base_url=docker_host, timeout=int(timeout))
    return docker.from_env(timeout=int(timeout))
