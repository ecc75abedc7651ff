"""One client connection to the gateway: its requests in order, each checked and forwarded.

Identity was fixed at accept (SO_PEERCRED). Requests on one container need its owner; creates
go to `CreateFlow`; everything else passes byte for byte on one upstream connection to
dockerd, hijacked connections and streams included.
"""

from __future__ import annotations

import contextlib
import json
import logging
import select
import socket
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ds01.containers import LABEL_ALLOCATION

from . import gateway_routes as routes
from .gateway_backends import Caller, DockerUnavailable, unix_connect
from .gateway_create import CreateRefused, exec_refusal, stamp_labels, volume_options_refusal
from .gateway_creation import CreateFlow
from .gateway_http import (
    NONE,
    UNTIL_CLOSE,
    BodyTooLarge,
    Head,
    ProtocolError,
    Stream,
    copy_body,
    error_response,
    read_body,
    read_head,
    request_framing,
    request_line,
    response_framing,
    splice,
    status_code,
)
from .gateway_routes import Refusal

if TYPE_CHECKING:
    from .gateway_server import GatewayServer

logger = logging.getLogger(__name__)


class Connection:
    """One client connection: requests in order, each forwarded on one upstream connection."""

    def __init__(self, gateway: GatewayServer, sock: socket.socket, caller: Caller) -> None:
        self.gateway, self.caller = gateway, caller
        self.client = Stream(sock)
        self.upstream: Stream | None = None
        self._body_read = False  # the current request's body was consumed

    # --- the request loop ---------------------------------------------------------------------

    def serve(self) -> None:
        try:
            while self._one_request():
                pass
        except (OSError, ProtocolError) as exc:
            logger.debug("connection of %s ended: %s", self.caller.user, exc)
        finally:
            self._close_upstream()
            with contextlib.suppress(OSError):
                self.client.sock.close()

    def _one_request(self) -> bool:
        """Handle one request; False when the connection is done."""
        self.client.sock.settimeout(self.gateway.settings.idle_timeout)
        try:
            head = read_head(self.client)
        except TimeoutError:
            return False
        except ProtocolError as exc:
            self._answer(Refusal(400, f"ds01: malformed request: {exc}", close=True))
            return False
        if head is None:
            return False
        self.client.sock.settimeout(self.gateway.settings.read_timeout)
        self._body_read = False
        try:
            line = request_line(head)
            return self._dispatch(head, line.method, line.target)
        except Refusal as refusal:
            self._answer(refusal)
            if refusal.close:
                return False
            return self._drain(head)
        except TimeoutError:
            self._answer(Refusal(408, "ds01: the request did not arrive in time", close=True))
            return False
        except BodyTooLarge as exc:
            self._answer(Refusal(413, f"ds01: {exc}", close=True))
            return False
        except ProtocolError as exc:
            self._answer(Refusal(400, f"ds01: malformed request: {exc}", close=True))
            return False
        except DockerUnavailable as exc:
            self._answer(Refusal(502, f"ds01 gateway: {exc}", close=True))
            return False

    def _answer(self, refusal: Refusal) -> None:
        with contextlib.suppress(OSError):
            self.client.sock.sendall(
                error_response(refusal.status, refusal.message, close=refusal.close)
            )

    def _drain(self, head: Head) -> bool:
        """Discard the body of a refused request so the connection can carry the next one."""
        framing = request_framing(head)
        if framing.kind == NONE or self._body_read:
            return True
        if framing.length > 16 * 1024 * 1024:
            return False
        read_body(self.client, framing, 16 * 1024 * 1024)
        return True

    def _dispatch(self, head: Head, method: str, target: str) -> bool:
        caller, route = self.caller, routes.route(method, target)
        if route.kind == routes.CREATE:
            return CreateFlow(self).run(head, target)
        if route.kind in (routes.VOLUME_CREATE, routes.NETWORK_CREATE):
            return self._stamp_owner(head, route.kind)
        if route.kind == routes.CONTAINER and method == "POST" and _is_start(target):
            self._check_start(route.target)
        if caller.admin:
            if route.kind == routes.CONTAINER and method == "POST" and _is_stop(target):
                self.gateway.grants.note_admin_stop(
                    self.gateway.probe, route.target, admin=caller.user
                )
            return self._forward(head)
        if route.kind == routes.ADMIN and method not in routes.READ_ONLY:
            raise Refusal(403, f"ds01: {method} {urlsplit(target).path} is for admins only")
        if route.kind == routes.CONTAINER and not self._stats(method, target):
            self.check_owner(route.target)
            if method == "POST" and _is_exec_create(target):
                return self._checked_exec(head)
        elif route.kind == routes.VOLUME and method == "DELETE":
            self.check_volume_owner(route.target)
        elif route.kind == routes.COMMIT:
            self.check_owner(route.target)
        elif route.kind == routes.EXEC:
            container = self.gateway.probe.exec_container(route.target)
            if container:
                self.check_owner(container)
        elif route.kind == routes.SCOPE or (
            route.kind == routes.LIST
            and (
                not self.gateway.policy.gateway.list_all_containers
                or routes.finds_by_client_labels(target)
            )
        ):
            return self._forward(self._retarget(head, method, target))
        return self._forward(head)

    def _checked_exec(self, head: Head) -> bool:
        body = self.json_body(head, self.gateway.policy.gateway.max_create_body)
        problem = exec_refusal(body)
        if problem:
            raise Refusal(403, f"ds01: {problem}")
        _, keep = self.forward_json(head, body)
        return keep

    def check_volume_owner(self, name: str, *, field: str = "") -> None:
        """Named volumes made through the gateway carry their creator; others' are refused."""
        owner = self.gateway.probe.volume_owner(name)
        if not owner or owner == self.caller.user:
            return  # no such volume yet, or one nobody stamped (shared)
        where = f"{field}: " if field else ""
        raise Refusal(403, f"ds01: {where}volume {name} is not yours")

    def _check_start(self, ref: str) -> None:
        """A container whose GPU hold ended must not start again on a device now someone else's."""
        labels = self.gateway.probe.container_labels(ref)
        allocation = (labels or {}).get(LABEL_ALLOCATION)
        if not allocation or self.gateway.grants.state_of(allocation) != "released":
            return
        raise Refusal(
            409,
            f"ds01: container {ref} gave its GPU back when its hold ended (allocation "
            f"{allocation} released); remove it and run a new one to get a GPU",
        )

    @staticmethod
    def _stats(method: str, target: str) -> bool:
        """Resource figures carry no secrets: `docker stats` shows every container."""
        return method == "GET" and urlsplit(target).path.rstrip("/").endswith("/stats")

    def check_owner(self, ref: str, *, field: str = "") -> None:
        owner = self.gateway.probe.container_owner(ref)
        if owner is None or owner == self.caller.user:
            return  # no such container: dockerd gives its own 404
        where = f"{field}: " if field else ""
        raise Refusal(
            403,
            f"ds01: {where}container {ref} is not yours; "
            "you may only act on containers you created",
        )

    def _retarget(self, head: Head, method: str, target: str) -> Head:
        new_target = routes.with_owner_filter(target, self.caller.user)
        version = head.start.rsplit(" ", 1)[1]
        return head.with_start(f"{method} {new_target} {version}")

    # --- creates --------------------------------------------------------------------------------

    def json_body(self, head: Head, limit: int) -> dict:
        raw = read_body(self.client, request_framing(head), limit)
        self._body_read = True
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError as exc:
            raise Refusal(400, f"ds01: the request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise Refusal(400, "ds01: the request body must be a JSON object")
        return body

    def client_still_there(self) -> bool:
        sock = self.client.sock
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return True
            return bool(sock.recv(1, socket.MSG_PEEK))
        except OSError:
            return False

    def _stamp_owner(self, head: Head, kind: str) -> bool:
        """Volumes and networks carry their creator, so prunes can be scoped to it."""
        body = self.json_body(head, self.gateway.policy.gateway.max_create_body)
        caller = self.caller
        if kind == routes.VOLUME_CREATE and not caller.admin:
            problem = volume_options_refusal(body.get("DriverOpts"), "DriverOpts")
            if problem:
                raise Refusal(403, f"ds01: {problem}")
        try:
            body["Labels"] = stamp_labels(body.get("Labels"), {"ds01.user": caller.user})
        except CreateRefused as exc:
            raise Refusal(400, f"ds01: {exc}") from None
        _, keep = self.forward_json(head, body)
        return keep

    def forward_json(self, head: Head, body: dict) -> tuple[int, bool]:
        data = json.dumps(body).encode()
        new_head = (
            head.replaced("Transfer-Encoding", None)
            .replaced("Content-Length", str(len(data)))
            .replaced("Content-Type", "application/json")
        )
        status = [0]
        keep = self._forward(new_head, body=data, status_out=status)
        return status[0], keep

    # --- forwarding -----------------------------------------------------------------------------

    def _upstream(self) -> Stream:
        if self.upstream is None:
            self.upstream = Stream(unix_connect(self.gateway.docker_socket, None))
        return self.upstream

    def _close_upstream(self) -> None:
        if self.upstream is not None:
            with contextlib.suppress(OSError):
                self.upstream.sock.close()
            self.upstream = None

    def _send_head(self, head: Head) -> Stream:
        """Send a head upstream, on a new connection if the kept one was closed meanwhile."""
        for attempt in (1, 2):
            fresh = self.upstream is None
            upstream = self._upstream()
            try:
                upstream.sock.sendall(head.encode())
                return upstream
            except OSError:
                self._close_upstream()
                if fresh or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _forward(self, head: Head, *, body: bytes | None = None, status_out=None) -> bool:
        """Send one request upstream and its answer back; False when the connection ends."""
        method = head.start.split(" ", 1)[0]
        try:
            upstream = self._send_head(head)
        except OSError as exc:
            raise DockerUnavailable(f"cannot reach dockerd: {exc}") from exc
        if body is not None:
            upstream.sock.sendall(body)
        else:
            copy_body(self.client, request_framing(head), upstream.sock)
        self.client.sock.settimeout(None)  # streams (logs -f, events) may be quiet for long
        while True:
            answer = read_head(upstream)
            if answer is None:
                self._close_upstream()
                raise DockerUnavailable("dockerd closed the connection without answering")
            status = status_code(answer)
            self.client.sock.sendall(answer.encode())
            if status == 101 or status >= 200:
                break
        if status_out is not None:
            status_out[0] = status
        framing = response_framing(answer, method)
        if status == 101 or framing.kind == UNTIL_CLOSE:
            splice(self.client, upstream, drain_after_close=self.gateway.settings.drain_after_close)
            self._close_upstream()
            return False
        copy_body(upstream, framing, self.client.sock)
        closing = "close" in answer.tokens("Connection") or "close" in head.tokens("Connection")
        if "close" in answer.tokens("Connection"):
            self._close_upstream()
        return not closing and not head.start.endswith("HTTP/1.0")


def _is_exec_create(target: str) -> bool:
    return urlsplit(target).path.rstrip("/").endswith("/exec")


def _is_start(target: str) -> bool:
    return urlsplit(target).path.rstrip("/").endswith("/start")


def _is_stop(target: str) -> bool:
    return urlsplit(target).path.rstrip("/").endswith(("/stop", "/kill"))
