"""What the gateway asks of others: dockerd (owners, default runtime) and the allocator (GPUs).

Both are edges with I/O; the connection handler only sees their small answers.
"""

from __future__ import annotations

import http.client
import json
import logging
import pwd
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from ds01.containers import LABEL_USER
from ds01.policy import Policy

from .client import AllocatorClient, AllocatorUnavailable, Refused

logger = logging.getLogger(__name__)


class DockerUnavailable(RuntimeError):
    """dockerd's socket does not answer."""


class ClientGone(RuntimeError):
    """The Docker client hung up while its create waited for a GPU."""


@dataclass(frozen=True)
class Caller:
    """Who is on the other end of a gateway connection, from the kernel's peer credentials."""

    uid: int
    user: str
    group: str
    admin: bool
    home: str | None


def identify(uid: int, policy: Policy) -> Caller:
    """uid -> account -> policy group; root and the policy's admin groups are admins."""
    try:
        entry = pwd.getpwuid(uid)
        user, home = entry.pw_name, entry.pw_dir
    except KeyError:
        user, home = f"uid{uid}", None
    group = policy.group_of(user).name
    admin = uid == 0 or group in policy.gateway.admin_groups
    if home in ("", "/"):
        home = None
    return Caller(uid, user, group, admin, home)


def unix_connect(path: str, timeout: float | None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise DockerUnavailable(f"cannot reach dockerd at {path}: {exc.strerror or exc}") from exc
    return sock


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = unix_connect(self.unix_path, self.timeout)


class DockerProbe:
    """Small JSON reads from dockerd that decide ownership; one kept-alive connection per thread."""

    def __init__(self, socket_path: str, *, timeout: float = 30.0) -> None:
        self.socket_path, self.timeout = socket_path, timeout
        self._local = threading.local()
        self._runtime: tuple[float, str] | None = None

    def get(self, path: str) -> tuple[int, Any]:
        for attempt in (1, 2):
            conn: Any = getattr(self._local, "conn", None)
            fresh = conn is None
            if fresh:
                conn = self._local.conn = _UnixHTTPConnection(self.socket_path, self.timeout)
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                raw = response.read()
                break
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                self._local.conn = None
                if fresh or attempt == 2:
                    raise DockerUnavailable(f"cannot reach dockerd: {exc}") from exc
        try:
            return response.status, json.loads(raw) if raw else {}
        except ValueError:
            return response.status, {}

    def container_labels(self, ref: str) -> dict[str, str] | None:
        """A container's labels (id or name); None if there is no such container."""
        status, data = self.get(f"/containers/{quote(ref, safe='')}/json")
        if status == 404:
            return None
        if status >= 400:
            raise DockerUnavailable(f"dockerd answered {status} to inspect {ref}")
        return dict((data.get("Config") or {}).get("Labels") or {})

    def container_owner(self, ref: str) -> str | None:
        """The stamped owner of a container (id or name); '' when unstamped, None if no such."""
        labels = self.container_labels(ref)
        return None if labels is None else labels.get(LABEL_USER, "")

    def volume_owner(self, name: str) -> str | None:
        """The stamped creator of a named volume; '' when unstamped, None if there is none."""
        status, data = self.get(f"/volumes/{quote(name, safe='')}")
        if status == 404:
            return None
        if status >= 400:
            raise DockerUnavailable(f"dockerd answered {status} to volume inspect {name}")
        return str((data.get("Labels") or {}).get(LABEL_USER, ""))

    def exec_container(self, exec_id: str) -> str | None:
        status, data = self.get(f"/exec/{quote(exec_id, safe='')}/json")
        if status == 404:
            return None
        if status >= 400:
            raise DockerUnavailable(f"dockerd answered {status} to exec inspect {exec_id}")
        return str(data.get("ContainerID") or "")

    def default_runtime(self) -> str:
        """dockerd's DefaultRuntime (cached 60 s): whether NVIDIA_VISIBLE_DEVICES gives a GPU."""
        now = time.monotonic()
        if self._runtime and now - self._runtime[0] < 60:
            return self._runtime[1]
        status, data = self.get("/info")
        runtime = str(data.get("DefaultRuntime") or "runc") if status == 200 else "runc"
        self._runtime = (now, runtime)
        return runtime


@dataclass(frozen=True)
class GpuGrant:
    allocation: str
    devices: tuple[str, ...]


class AllocatorGrants:
    """Asks the allocator for devices on a user's behalf (the gateway runs as root)."""

    def __init__(self, client: AllocatorClient, *, poll: float = 1.0) -> None:
        self.client, self.poll = client, poll
        self._devices: tuple[float, list[dict[str, Any]]] | None = None

    def device_table(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        if self._devices is None or now - self._devices[0] > 5:
            self._devices = (now, self.client.devices())
        return self._devices[1]

    def grant(
        self,
        *,
        user: str,
        count: int,
        profile: str | None,
        full_gpu: bool,
        container_type: str,
        name: str,
        still_wanted: Callable[[], bool],
    ) -> GpuGrant:
        """Devices for `user`, waiting in the queue; Refused / AllocatorUnavailable / ClientGone."""

        def progress(_answer: dict[str, Any]) -> None:
            if not still_wanted():
                raise ClientGone("the client disconnected while waiting for a GPU")

        alloc = self.client.allocate(
            count=count,
            profile=profile,
            full_gpu=full_gpu,
            container_type=container_type,
            name=name,
            user=user,
            poll=self.poll,
            progress=progress,
        )
        return GpuGrant(alloc["id"], tuple(alloc["devices"]))

    def claim(self, allocation: str, *, user: str, count: int) -> GpuGrant | None:
        """A reservation the client made itself (the wrapper's countdown), if it is truly theirs.

        Only a reserved, unbound allocation of the same user with enough devices is taken over;
        anything else is ignored and the gateway allocates anew.
        """
        try:
            status, answer = self.client.call(
                "GET", f"/v1/allocations/{quote(allocation, safe='')}?user={quote(user)}"
            )
        except AllocatorUnavailable:
            return None
        alloc = answer.get("allocation") if status == 200 else None
        if not isinstance(alloc, dict):
            return None
        devices = tuple(alloc.get("devices") or ())
        if (
            alloc.get("user") != user
            or alloc.get("state") != "reserved"
            or alloc.get("container_id")
            or len(devices) < count
        ):
            return None
        return GpuGrant(str(alloc["id"]), devices)

    def note_admin_stop(self, probe: DockerProbe, ref: str, *, admin: str) -> None:
        """An admin stops someone's container: its owner reads why in `container ls`/history.
        Best effort: a failure is logged, the stop goes ahead."""
        try:
            status, data = probe.get(f"/containers/{quote(ref, safe='')}/json")
            labels = (data.get("Config") or {}).get("Labels") or {} if status == 200 else {}
            owner = labels.get(LABEL_USER, "")
            if not owner or owner == admin or not (data.get("State") or {}).get("Running"):
                return
            self.client.note_admin_stop(
                container_id=str(data["Id"]),
                container=str(data.get("Name", "")).lstrip("/"),
                user=owner,
                detail=f"docker stop by {admin}",
            )
        except (AllocatorUnavailable, Refused, DockerUnavailable, KeyError, AttributeError) as exc:
            logger.warning("admin stop of %s not recorded for its owner: %s", ref, exc)

    def state_of(self, allocation: str) -> str | None:
        """An allocation's state, None when the allocator does not know it or cannot say."""
        try:
            status, answer = self.client.call(
                "GET", f"/v1/allocations/{quote(allocation, safe='')}"
            )
        except AllocatorUnavailable:
            logger.warning("allocator unreachable; cannot check allocation %s", allocation)
            return None
        alloc = answer.get("allocation") if status == 200 else None
        return str(alloc.get("state")) if isinstance(alloc, dict) else None

    def release(self, allocation: str) -> None:
        try:
            self.client.release(allocation)
        except (Refused, AllocatorUnavailable):
            logger.exception("could not release allocation %s after a failed create", allocation)


__all__ = [
    "AllocatorGrants",
    "Caller",
    "ClientGone",
    "DockerProbe",
    "DockerUnavailable",
    "GpuGrant",
    "identify",
    "unix_connect",
]
