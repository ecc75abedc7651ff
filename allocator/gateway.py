"""`ds01 gateway`: the Docker Engine API on a socket every user may open, forwarded to dockerd.

Identity is the connecting uid (SO_PEERCRED), read once per connection. Creates are checked
and rewritten (labels, GPUs from the allocator); requests on one container need its owner;
everything else passes byte for byte, hijacked connections and streams included.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from ds01.containers import LABEL_ALLOCATION
from ds01.policy import Policy

from . import gateway_routes as routes
from .client import AllocatorUnavailable, Refused
from .gateway_backends import (
    AllocatorGrants,
    Caller,
    ClientGone,
    DockerProbe,
    DockerUnavailable,
    GpuGrant,
    identify,
    unix_connect,
)
from .gateway_create import (
    CreateRefused,
    CreateRules,
    GpuAsk,
    client_type,
    create_refusal,
    gpu_ask,
    owner_stamps,
    profile_hint,
    referenced_containers,
    rewrite_create,
    stamp_labels,
    volume_options_refusal,
)
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
from .server import peer_credentials

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatewaySettings:
    """Timeouts and bounds, in seconds and connections."""

    idle_timeout: float = 300.0  # a kept-alive connection waiting for its next request
    read_timeout: float = 60.0  # a request head or body that stops arriving
    max_connections: int = 1024
    drain_after_close: float = 2.0  # hijack: the client's time to close after the daemon did


class Refusal(Exception):
    """Answer the client with a Docker-style error and go on (or close)."""

    def __init__(self, status: int, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.close = status, message, close


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
            return self._create(head, target)
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
            self._check_owner(route.target)
        elif route.kind == routes.COMMIT:
            self._check_owner(route.target)
        elif route.kind == routes.EXEC:
            container = self.gateway.probe.exec_container(route.target)
            if container:
                self._check_owner(container)
        elif route.kind == routes.SCOPE or (
            route.kind == routes.LIST and not self.gateway.policy.gateway.list_all_containers
        ):
            return self._forward(self._retarget(head, method, target))
        return self._forward(head)

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

    def _check_owner(self, ref: str, *, field: str = "") -> None:
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

    def _json_body(self, head: Head, limit: int) -> dict:
        raw = read_body(self.client, request_framing(head), limit)
        self._body_read = True
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError as exc:
            raise Refusal(400, f"ds01: the request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise Refusal(400, "ds01: the request body must be a JSON object")
        return body

    def _create(self, head: Head, target: str) -> bool:
        gateway, caller = self.gateway, self.caller
        body = self._json_body(head, gateway.policy.gateway.max_create_body)
        runtime = gateway.probe.default_runtime()
        try:
            if not caller.admin:
                problem = create_refusal(body, home=caller.home, rules=gateway.rules)
                if problem:
                    logger.info("refused create user=%s: %s", caller.user, problem)
                    raise Refusal(403, f"ds01: {problem}")
                for field, ref in referenced_containers(body):
                    self._check_owner(ref, field=field)
            ask = gpu_ask(body, default_runtime=runtime)
            stamp_labels(body.get("Labels"), {})  # validates the labels' shape
        except CreateRefused as exc:
            raise Refusal(400, f"ds01: {exc}") from None
        name = dict(parse_qsl(urlsplit(target).query)).get("name", "")
        ctype = client_type(body.get("Labels") or {})
        grant = None
        if ask is not None:
            grant = self._claimed(body, ask) or self._grant(ask, ctype, name)
        stamps = owner_stamps(
            user=caller.user,
            group=caller.group,
            ctype=ctype,
            allocation=grant.allocation if grant else "",
        )
        rewritten = rewrite_create(
            body,
            stamps=stamps,
            ask=ask,
            devices=grant.devices if grant else (),
            default_runtime=runtime,
        )
        try:
            status, keep = self._forward_json(head, rewritten)
        except BaseException:
            if grant:
                gateway.grants.release(grant.allocation)
            raise
        if grant and status >= 300:
            gateway.grants.release(grant.allocation)  # nothing will bind it: free it now
            logger.info("create failed (%d); released allocation %s", status, grant.allocation)
        elif grant:
            logger.info(
                "created user=%s type=%s name=%s allocation=%s devices=%s",
                caller.user,
                ctype,
                name or "-",
                grant.allocation,
                ",".join(grant.devices),
            )
        return keep

    def _claimed(self, body: dict, ask: GpuAsk) -> GpuGrant | None:
        """The caller's own reservation named in the labels (the wrapper waited for it)."""
        labels = body.get("Labels") or {}
        wanted = labels.get(LABEL_ALLOCATION) if isinstance(labels, dict) else None
        if not wanted or not isinstance(wanted, str):
            return None
        grant = self.gateway.grants.claim(wanted, user=self.caller.user, count=max(1, ask.count))
        if grant is None:
            logger.info("user=%s named allocation %s, not theirs to use", self.caller.user, wanted)
        return grant

    def _grant(self, ask: GpuAsk, ctype: str, name: str) -> GpuGrant:
        gateway, caller = self.gateway, self.caller
        try:
            profile, full_gpu = profile_hint(ask.named, gateway.grants.device_table)
            return gateway.grants.grant(
                user=caller.user,
                count=max(1, ask.count),
                profile=profile,
                full_gpu=full_gpu,
                container_type=ctype,
                name=name,
                still_wanted=self._client_still_there,
            )
        except Refused as exc:
            status = exc.status if 400 <= exc.status < 600 else 503
            raise Refusal(status, exc.message) from None
        except AllocatorUnavailable as exc:
            raise Refusal(503, f"ds01: {exc}; GPU containers need the allocator") from None
        except ClientGone:
            logger.info("user=%s left while waiting for a GPU; ticket cancelled", caller.user)
            raise Refusal(499, "client gone", close=True) from None

    def _client_still_there(self) -> bool:
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
        body = self._json_body(head, self.gateway.policy.gateway.max_create_body)
        caller = self.caller
        if kind == routes.VOLUME_CREATE and not caller.admin:
            problem = volume_options_refusal(
                body.get("DriverOpts"), "DriverOpts", home=caller.home, rules=self.gateway.rules
            )
            if problem:
                raise Refusal(403, f"ds01: {problem}")
        try:
            body["Labels"] = stamp_labels(body.get("Labels"), {"ds01.user": caller.user})
        except CreateRefused as exc:
            raise Refusal(400, f"ds01: {exc}") from None
        _, keep = self._forward_json(head, body)
        return keep

    def _forward_json(self, head: Head, body: dict) -> tuple[int, bool]:
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


def _is_start(target: str) -> bool:
    return urlsplit(target).path.rstrip("/").endswith("/start")


def _is_stop(target: str) -> bool:
    return urlsplit(target).path.rstrip("/").endswith(("/stop", "/kill"))


class GatewayServer:
    """The listening socket and a thread per connection."""

    def __init__(
        self,
        *,
        socket_path: str | os.PathLike[str],
        docker_socket: str,
        policy: Policy,
        grants: AllocatorGrants,
        settings: GatewaySettings = GatewaySettings(),
        probe: DockerProbe | None = None,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.docker_socket = docker_socket
        self.policy, self.grants, self.settings = policy, grants, settings
        self.probe = probe or DockerProbe(docker_socket)
        gw = policy.gateway
        self.rules = CreateRules(
            allowed_bind_paths=gw.allowed_bind_paths,
            allowed_capabilities=gw.allowed_capabilities,
            allowed_devices=gw.allowed_devices,
            docker_sockets=(
                docker_socket,
                str(self.socket_path),
                "/run/docker.sock",
                "/var/run/docker.sock",
            ),
        )
        self._slots = threading.BoundedSemaphore(settings.max_connections)
        self._listener = self._listen()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def _listen(self) -> socket.socket:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        if self.socket_path.exists():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(self.socket_path))
            except OSError:
                self.socket_path.unlink()  # a stale socket from a crash
            else:
                raise OSError(f"{self.socket_path}: another gateway is serving on it")
            finally:
                probe.close()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.socket_path))
        os.chmod(self.socket_path, 0o666)  # identity is per connection, not per file mode
        listener.listen(256)
        return listener

    def serve_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                logger.exception("accept failed")
                continue
            self._start_connection(sock)

    def _start_connection(self, sock: socket.socket) -> None:
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                sock.sendall(error_response(503, "ds01 gateway: too many connections", close=True))
            sock.close()
            return
        creds = peer_credentials(sock)
        caller = identify(creds.uid if creds else -1, self.policy)
        thread = threading.Thread(
            target=self._run_connection,
            args=(sock, caller),
            name=f"gateway-{caller.user}",
            daemon=True,
        )
        thread.start()

    def _run_connection(self, sock: socket.socket, caller: Caller) -> None:
        try:
            Connection(self, sock, caller).serve()
        except Exception:
            logger.exception("gateway connection of %s failed", caller.user)
        finally:
            self._slots.release()

    def start_in_thread(self) -> GatewayServer:
        self._thread = threading.Thread(target=self.serve_forever, name="gateway", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._listener.close()
        if self._thread is not None:
            self._thread.join(5)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
