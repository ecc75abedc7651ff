"""The gateway's listening socket: mode 0666, a thread per connection, bind pins swept.

The socket's mode grants nothing: each connection's uid (SO_PEERCRED) is its identity.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from ds01.policy import Policy

from .gateway_backends import AllocatorGrants, Caller, DockerProbe, DockerUnavailable, identify
from .gateway_connection import Connection
from .gateway_create import CreateRules
from .gateway_http import error_response
from .gateway_pins import LABEL_PINS, BindPins, PinSweeper
from .server import peer_credentials

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatewaySettings:
    """Timeouts and bounds, in seconds and connections."""

    idle_timeout: float = 300.0  # a kept-alive connection waiting for its next request
    read_timeout: float = 60.0  # a request head or body that stops arriving
    max_connections: int = 1024
    drain_after_close: float = 2.0  # hijack: the client's time to close after the daemon did
    pin_sweep_interval: float = 60.0  # how often pins of removed containers are released


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
        pin_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.docker_socket = docker_socket
        self.policy, self.grants, self.settings = policy, grants, settings
        self.probe = probe or DockerProbe(docker_socket)
        self.rules = self._rules(policy)
        self.pins = BindPins(pin_dir or self.socket_path.parent / "gateway-binds")
        self._sweeper = PinSweeper(self.pins, self._pin_tokens, settings.pin_sweep_interval)
        self._slots = threading.BoundedSemaphore(settings.max_connections)
        self._listener = self._listen()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def _rules(self, policy: Policy) -> CreateRules:
        gw = policy.gateway
        return CreateRules(
            allowed_bind_paths=gw.allowed_bind_paths,
            allowed_capabilities=gw.allowed_capabilities,
            allowed_devices=gw.allowed_devices,
            docker_sockets=(
                self.docker_socket,
                str(self.socket_path),
                "/run/docker.sock",
                "/var/run/docker.sock",
            ),
        )

    def use_policy(self, policy: Policy) -> None:
        """A reloaded policy (SIGHUP): new requests judge with it, create rules included."""
        self.rules = self._rules(policy)
        self.policy = policy

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

    def _pin_tokens(self) -> list[str]:
        filters = quote(json.dumps({"label": [LABEL_PINS]}))
        status, listed = self.probe.get(f"/containers/json?all=1&filters={filters}")
        if status != 200:
            raise DockerUnavailable(f"dockerd answered {status} to the container list")
        return [c.get("Labels", {}).get(LABEL_PINS, "") for c in listed]

    def release_unused_pins(self, *, older_than: float = 60.0) -> int:
        """Unmount the pins of containers that no longer exist (the sweeper does it routinely)."""
        return self.pins.sweep(self._pin_tokens(), older_than=older_than)

    def serve_forever(self) -> None:
        self._sweeper.start()
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
        """Stop serving; pins stay mounted (containers that exist may start again)."""
        self._stopping.set()
        self._sweeper.stop()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._listener.close()
        if self._thread is not None:
            self._thread.join(5)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
