"""Waitress on a Unix socket (mode 0666) that tells the app who is calling (SO_PEERCRED).

The kernel reports the uid of the process that connected; a channel subclass reads it once
per connection and a task subclass puts it into the WSGI environ as `ds01.peer`. A request
body can never change it. An optional TCP listener (admins, bearer token) shares the threads,
and both feed decisions through one lane (allocator/dispatch.py).
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer, UnixWSGIServer
from waitress.task import WSGITask

from .dispatch import LEAVE_LANE_KEY, LaneDispatcher, in_decision_lane

logger = logging.getLogger(__name__)

PEER_ENVIRON_KEY = "ds01.peer"


@dataclass(frozen=True)
class PeerCredentials:
    """Who is at the other end of a Unix socket, as the kernel saw it at connect()."""

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCredentials | None:
    if sock.family != socket.AF_UNIX:
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return PeerCredentials(pid, uid, gid)


class PeerCredTask(WSGITask):
    def get_environment(self) -> dict[str, Any]:
        environ = super().get_environment()
        environ[PEER_ENVIRON_KEY] = getattr(self.channel, "peer", None)
        environ[LEAVE_LANE_KEY] = self.channel.server.task_dispatcher.leave_lane
        return environ


class PeerCredChannel(HTTPChannel):
    task_class = PeerCredTask

    def __init__(self, server: Any, sock: socket.socket, addr: Any, adj: Any, map=None) -> None:
        self.peer = peer_credentials(sock)
        super().__init__(server, sock, addr, adj, map=map)


class PeerCredUnixServer(UnixWSGIServer):
    channel_class = PeerCredChannel


class LaneTcpServer(TcpWSGIServer):
    channel_class = PeerCredChannel  # no peer on TCP (None), but the same lane hook


class SocketInUse(RuntimeError):
    """Another server answers on the socket path: taking it over would cut that one off."""


def refuse_live_socket(path: Path) -> None:
    """Raise SocketInUse when something accepts connections at `path`; a stale file is fine
    (waitress replaces it)."""
    if not path.exists():
        return
    if not stat.S_ISSOCK(path.lstat().st_mode):
        raise SocketInUse(f"{path} exists and is not a socket; remove it or choose another path")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return  # nobody listens: a leftover of a crash
        except OSError as exc:
            raise SocketInUse(f"{path}: cannot tell whether it is in use ({exc})") from None
    raise SocketInUse(f"another server is listening on {path}; stop it first")


class AllocatorServer:
    """The Unix-socket server (and an optional TCP one) on one waitress loop."""

    def __init__(
        self,
        app: Any,
        socket_path: str | os.PathLike[str],
        *,
        listen: tuple[str, int] | None = None,
        threads: int = 64,
        lane_for: Callable[[str, str], bool] = in_decision_lane,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        refuse_live_socket(self.socket_path)
        common = {
            "threads": threads,
            "channel_request_lookahead": 1,  # lets a long poll notice a client that left
            "connection_limit": 1000,
            "ident": "ds01-allocator",
        }
        self._map: dict = {}
        unix_adj = Adjustments(unix_socket=str(self.socket_path), unix_socket_perms="666", **common)
        self._dispatcher = LaneDispatcher(lane_for)
        self._dispatcher.set_thread_count(threads)
        self._servers = [
            PeerCredUnixServer(app, self._map, dispatcher=self._dispatcher, adj=unix_adj)
        ]
        self.tcp_address: tuple[str, int] | None = None
        if listen is not None:
            tcp_adj = Adjustments(listen=f"{listen[0]}:{listen[1]}", **common)
            tcp = LaneTcpServer(app, self._map, dispatcher=self._dispatcher, adj=tcp_adj)
            self._servers.append(tcp)
            self.tcp_address = (tcp.effective_host, tcp.effective_port)
        self._thread: threading.Thread | None = None
        self._adj = unix_adj
        self._socket_inode = self.socket_path.stat().st_ino  # ours: unlink only this one

    def run(self) -> None:
        """Serve until close(); returns then."""
        try:
            wasyncore.loop(
                timeout=self._adj.asyncore_loop_timeout,
                map=self._map,
                use_poll=self._adj.asyncore_use_poll,
            )
        except (SystemExit, KeyboardInterrupt):
            logger.info("server loop interrupted")
        finally:
            self._shutdown()

    def start_in_thread(self) -> AllocatorServer:
        self._thread = threading.Thread(target=self.run, name="allocator-server", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop from any thread: the loop thread itself closes the sockets (via the trigger)."""
        if self._thread is not None and self._thread.is_alive():
            try:
                self._servers[0].trigger.pull_trigger(lambda: wasyncore.close_all(self._map))
            except OSError:
                logger.debug("server loop already closing; waiting for it")  # second close()
            self._thread.join(10)
        elif self._thread is None:
            self._shutdown()

    def _shutdown(self) -> None:
        self._dispatcher.shutdown(timeout=2)
        if self._map:
            wasyncore.close_all(self._map)
        try:
            if self.socket_path.stat().st_ino == self._socket_inode:
                self.socket_path.unlink()
        except FileNotFoundError:
            pass
