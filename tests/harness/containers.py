"""One way for tests to remove a container at teardown, through Docker's own transient refusal.

dockerd (20.10, vfs) sometimes fails a forced removal with "driver failed to remove root
filesystem … directory not empty" when another request touched the container's filesystem
at that moment; the container is then marked dead and a second removal finishes the job.
A teardown that stops at the first refusal fails a test that passed and leaves the container
behind for the next one.
"""

from __future__ import annotations

import time

import docker

_TRANSIENT = "failed to remove root filesystem"


def remove_container(container, *, attempts: int = 5) -> None:
    """Force-remove a docker-py Container; gone already is fine, any other error is raised."""
    for attempt in range(1, attempts + 1):
        try:
            container.remove(force=True)
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            if _TRANSIENT not in str(exc) or attempt == attempts:
                raise
            time.sleep(0.2 * attempt)


def remove_named(client, name: str) -> None:
    """Force-remove the container called `name` on `client`, if there is one."""
    try:
        container = client.containers.get(name)
    except docker.errors.NotFound:
        return
    remove_container(container)
