"""The keep-alive file: read through the container's mount on the host when there is one,
otherwise through the Docker archive API once per interval. Never `docker exec`.

The exporter runs unprivileged (`User=ds01` in the shipped unit) and users' homes are often
0700: a host path it may not read is not an absent file, so it asks Docker's archive API
(dockerd reads it as root) instead — no extra capability in the unit.

Archive reads are spread over the interval: each container is re-read on its own phase (from
its id), so containers first seen together (at start-up, or created in a batch) do not all come
due in the same collection cycle a minute later.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ds01.containers import parse_docker_time

from .health import Episode, ErrorCounters
from .inventory import KnownContainer, Mount

logger = logging.getLogger(__name__)

ArchiveStat = Callable[[str, str], float | None]  # (container id, path) -> mtime or None


def host_path(mounts: Iterable[Mount], path: str) -> tuple[str, str] | None:
    """(host path of `path`, host folder of the mount) through the deepest mount holding it."""
    best: Mount | None = None
    best_dest = ""
    for mount in mounts:
        if not mount.source:
            continue
        dest = mount.destination.rstrip("/")
        if (path == dest or path.startswith(dest + "/")) and len(dest) >= len(best_dest):
            best, best_dest = mount, dest
    if best is None:
        return None
    relative = path[len(best_dest) :].lstrip("/")
    return (os.path.join(best.source, relative) if relative else best.source), best.source


def docker_archive_stat(docker_client: Callable[[], Any]) -> ArchiveStat:
    """mtime of a path inside a container from a HEAD on the archive endpoint (no file copy)."""

    def stat(container_id: str, path: str) -> float | None:
        api = docker_client().api
        url = api._url("/containers/{0}/archive", container_id)
        response = api.head(url, params={"path": path}, timeout=api.timeout)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        header = response.headers.get("X-Docker-Container-Path-Stat")
        if not header:
            raise ValueError("archive answer without X-Docker-Container-Path-Stat")
        return parse_docker_time(json.loads(base64.b64decode(header))["mtime"])

    return stat


def next_check(container_id: str, *, checked_at: float, interval: float) -> float:
    """When to read a container's file again: on its own phase of the interval, and never
    sooner than half an interval after the last read (so about once per interval)."""
    phase = zlib.crc32(container_id.encode()) / 2**32 * interval
    earliest = checked_at + interval / 2
    return phase + math.ceil((earliest - phase) / interval) * interval


@dataclass(frozen=True)
class _Checked:
    due: float  # when to read again
    mtime: float | None


class KeepAliveChecker:
    """Remembers each container's keep-alive mtime; owned by the collector thread."""

    def __init__(
        self,
        *,
        path: str,
        archive_stat: ArchiveStat | None,
        interval: float,
        errors: ErrorCounters,
    ) -> None:
        self.path = path
        self._archive_stat = archive_stat
        self._interval = interval
        self._errors = errors
        self._cache: dict[str, _Checked] = {}
        # container id -> (its mounts, the path looked up, where that is on the host): a
        # container's mounts never change, so the lookup is done once, not every cycle.
        self._host_paths: dict[str, tuple[tuple[Mount, ...], str, tuple[str, str] | None]] = {}
        self._episode = Episode(logger, "keep-alive check")

    def _host_path(self, container: KnownContainer) -> tuple[str, str] | None:
        container_id = container.facts.container_id
        known = self._host_paths.get(container_id)
        if known is not None and known[0] is container.mounts and known[1] == self.path:
            return known[2]
        found = host_path(container.mounts, self.path)
        self._host_paths[container_id] = (container.mounts, self.path, found)
        return found

    def mtime(self, container: KnownContainer, now: float) -> float | None:
        """The file's mtime (Unix seconds), or None when it is absent or cannot be read."""
        found = self._host_path(container)
        if found is not None:
            target, mount_source = found
            try:
                return os.lstat(target).st_mtime
            except FileNotFoundError:
                if os.path.isdir(mount_source) or os.path.isfile(mount_source):
                    return None  # the mount is visible here: the file is simply absent
            except PermissionError:
                pass  # a 0700 home: not ours to read, so Docker reads it (below)
            except OSError as exc:
                self._errors.add("keepalive")
                self._episode.fail(f"{target}: {exc.strerror}")
                return None
        return self._via_archive(container.facts.container_id, now)

    def _via_archive(self, container_id: str, now: float) -> float | None:
        cached = self._cache.get(container_id)
        if cached is not None and now < cached.due:
            return cached.mtime
        if self._archive_stat is None:
            return None
        try:
            mtime = self._archive_stat(container_id, self.path)
        except Exception as exc:  # noqa: BLE001 - any Docker/transport failure is counted
            self._errors.add("keepalive")
            self._episode.fail(f"container {container_id[:12]}: {exc}")
            mtime = cached.mtime if cached is not None else None
        else:
            self._episode.ok()
        due = next_check(container_id, checked_at=now, interval=self._interval)
        self._cache[container_id] = _Checked(due, mtime)
        return mtime

    def retain(self, container_ids: Iterable[str]) -> None:
        keep = set(container_ids)
        for known in (self._cache, self._host_paths):
            for cid in [c for c in known if c not in keep]:
                del known[cid]
