"""Talks to the allocator over its Unix socket (or TCP with a token); used by the CLIs."""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode, urlsplit

from ds01.durations import format_duration

DEFAULT_SOCKET = "/run/ds01/allocator.sock"
SOCKET_ENV = "DS01_ALLOCATOR_SOCKET"


class AllocatorUnavailable(RuntimeError):
    """The allocator cannot be reached (not running, wrong socket, permissions)."""


class Refused(RuntimeError):
    """The allocator said no; `message` is what to show the user."""

    def __init__(self, status: int, payload: dict[str, Any]) -> None:
        self.status = status
        self.reason = str(payload.get("error", "error"))
        self.message = str(payload.get("message", f"HTTP {status}"))
        self.payload = payload
        super().__init__(self.message)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def default_socket() -> str:
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def progress_line(answer: dict[str, Any]) -> str:
    """One line for a queued request: its place and the wait left."""
    place = answer.get("position") or "?"
    left = format_duration(float(answer.get("remaining", 0)))
    return f"ds01: no free GPU yet; waiting in queue (position {place}), {left} left"


class AllocatorClient:
    def __init__(
        self,
        socket_path: str | None = None,
        *,
        url: str | None = None,
        token: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.socket_path = socket_path or default_socket()
        self.url, self.token, self.timeout = url, token, timeout
        self._local = threading.local()  # one kept-alive connection per thread

    @property
    def where(self) -> str:
        return self.url or self.socket_path

    def _connection(self) -> http.client.HTTPConnection:
        if self.url:
            parts = urlsplit(self.url)
            return http.client.HTTPConnection(
                parts.hostname or "localhost", parts.port, timeout=self.timeout
            )
        return _UnixConnection(self.socket_path, self.timeout)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in (1, 2):
            conn: Any = getattr(self._local, "conn", None)
            fresh = conn is None
            if fresh:
                conn = self._local.conn = self._connection()
            try:
                conn.request(method, path, body=data, headers=headers)
                response = conn.getresponse()
                raw = response.read()
                break
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                self._local.conn = None
                # A kept-alive connection the server closed meanwhile: retry once on a new one.
                if fresh or attempt == 2:
                    raise AllocatorUnavailable(
                        f"cannot reach the GPU allocator at {self.where}: {exc}"
                    ) from exc
        if response.will_close:
            conn.close()
            self._local.conn = None
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            payload = {"error": "bad_response", "message": raw[:200].decode(errors="replace")}
        return response.status, payload

    def _checked(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        status, payload = self.call(method, path, body)
        if status >= 400:
            raise Refused(status, payload)
        return payload

    def allocate(
        self,
        *,
        count: int = 1,
        profile: str | None = None,
        full_gpu: bool = False,
        container_type: str = "docker",
        name: str = "",
        user: str | None = None,
        poll: float = 1.0,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Ask for devices and wait in the queue; returns the allocation or raises Refused."""
        body: dict[str, Any] = {
            "count": count,
            "full_gpu": full_gpu,
            "type": container_type,
            "name": name,
            "wait": poll,
        }
        if profile:
            body["profile"] = profile
        if user:
            body["user"] = user
        status, answer = self.call("POST", "/v1/allocations", body)
        ticket = answer.get("ticket")
        try:
            while status == 202:
                ticket = answer["ticket"]
                if progress is not None:
                    progress(answer)
                status, answer = self.call("GET", f"/v1/tickets/{ticket}?wait={poll:g}")
        except BaseException:
            if ticket and status == 202:
                self.cancel(ticket)
            raise
        if status != 201:
            raise Refused(status, answer)
        return answer["allocation"]

    def cancel(self, ticket: str) -> None:
        try:
            self.call("DELETE", f"/v1/tickets/{ticket}")
        except AllocatorUnavailable:
            return

    def release(self, allocation_id: str) -> dict[str, Any]:
        return self._checked("DELETE", f"/v1/allocations/{allocation_id}")["allocation"]

    def get(self, allocation_id: str) -> dict[str, Any]:
        return self._checked("GET", f"/v1/allocations/{allocation_id}")["allocation"]

    def allocations(self, *, everyone: bool = False) -> list[dict[str, Any]]:
        return self._checked("GET", "/v1/allocations" + ("?all=1" if everyone else ""))[
            "allocations"
        ]

    def devices(self) -> list[dict[str, Any]]:
        return self._checked("GET", "/v1/devices")["devices"]

    def usage(self) -> dict[str, Any]:
        return self._checked("GET", "/v1/usage")

    def extend(
        self, container: str, duration: str | None = None, *, kind: str = "runtime"
    ) -> dict[str, Any]:
        """Move a deadline of the caller's own container; Refused carries the bounds."""
        body: dict[str, Any] = {"container": container, "kind": kind}
        if duration is not None:
            body["duration"] = duration
        return self._checked("POST", "/v1/extensions", body)

    def extensions(self, *, everyone: bool = False) -> list[dict[str, Any]]:
        return self._checked("GET", "/v1/extensions" + ("?all=1" if everyone else ""))["extensions"]

    def history(
        self,
        *,
        user: str | None = None,
        since: float | None = None,
        container_id: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """The caller's warnings, stops, grants and waits, oldest first (admins: `user`'s)."""
        query = {"limit": str(limit)}
        if user:
            query["user"] = user
        if since is not None:
            query["since"] = f"{since:.3f}"
        if container_id:
            query["container_id"] = container_id
        return self._checked("GET", "/v1/history?" + urlencode(query))["history"]

    def note_admin_stop(self, *, container_id: str, container: str, user: str, detail: str) -> None:
        """Record that an admin stopped `user`'s container, so its owner reads why (admins)."""
        body = {"container_id": container_id, "container": container, "owner": user,
                "detail": detail}  # fmt: skip
        self._checked("POST", "/v1/history", body)
