"""Host PID -> Docker container id, through /proc/<pid>/cgroup (v1, systemd and v2 forms)."""

from __future__ import annotations

import os
import re
from pathlib import Path

# /docker/<id>, /system.slice/docker-<id>.scope, .../docker/<id>/… (nested), and
# containerd's cri-containerd-<id>.scope; the id is always 64 hex characters.
_CONTAINER_ID = re.compile(r"(?:/docker[/-]|/cri-containerd-|/libpod-)([0-9a-f]{64})(?:\.scope)?")


def container_id_from_cgroup(text: str) -> str | None:
    """The container id in the contents of a /proc/<pid>/cgroup file, or None."""
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        matches = _CONTAINER_ID.findall(path)
        if matches:
            return matches[-1]
    return None


def container_id_of_pid(pid: int, proc_root: str | os.PathLike[str] = "/proc") -> str | None:
    """None when the process is gone or not in a container."""
    try:
        text = (Path(proc_root) / str(pid) / "cgroup").read_text()
    except OSError:
        return None
    return container_id_from_cgroup(text)
