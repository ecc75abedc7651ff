"""Supervised child processes: a private dockerd, Prometheus and Alertmanager.

Used by the test harness and by `ds01 up`: each component gets its own ports, sockets and
folders, so a test run can sit beside a live stack, and `stop()` always leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tarfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import requests

from .webauth import (
    ADMIN,
    SENDER,
    BasicAuth,
    http_client_config,
    new_password,
    web_config,
    write_private,
)

logger = logging.getLogger(__name__)

HOOK_NAME = "nvidia-container-runtime-hook"
BUSYBOX_IMAGE = "ds01/busybox:latest"


class StackError(RuntimeError):
    """A component could not be started; the message names it and points at its log."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def find_binary(name: str, *alternatives: str) -> str | None:
    for candidate in (name, *alternatives):
        path = shutil.which(candidate) or shutil.which(candidate, path="/usr/sbin:/sbin")
        if path:
            return path
    return None


class ChildProcess:
    """One supervised child: started in its own process group, logs to a file, stopped for sure."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: str | os.PathLike[str],
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        user: str | None = None,
    ) -> None:
        self.name, self.argv, self.log_path = name, list(argv), Path(log_path)
        self.env, self.cwd = dict(env) if env is not None else None, cwd
        self.user = user  # run as this account (root only); None = as ourselves
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ChildProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        logger.info("starting %s: %s", self.name, " ".join(self.argv))
        self.process = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
            **_as_account(self.user),
        )
        log.close()
        return self

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll `check` until true; fail with the log tail if the child dies or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise StackError(
                    f"{self.name} exited (code {self.process and self.process.returncode}) "
                    f"before {what}; log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                if check():
                    return
            except Exception:
                logger.debug("%s not ready yet", self.name, exc_info=True)
            time.sleep(0.1)
        raise StackError(
            f"{self.name} not {what} after {timeout:.0f}s; log {self.log_path}:\n{self.log_tail()}"
        )

    def signal(self, signum: int) -> None:
        if self.running():
            assert self.process is not None
            self.process.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left."""
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in %.0fs; killing it", self.name, timeout)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait(5)
        logger.info("stopped %s", self.name)


def _as_account(user: str | None) -> dict[str, Any]:
    """Popen arguments that drop to `user` (its primary group, no supplementary groups)."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _http_ok(url: str, auth: tuple[str, str] | None = None) -> bool:
    return requests.get(url, timeout=1, auth=auth).status_code == 200


# --- dockerd ---------------------------------------------------------------------------------


@dataclass
class Dockerd:
    """A private Docker engine: own data-root, exec-root, pidfile and unix socket."""

    root: Path
    child: ChildProcess

    @property
    def socket_path(self) -> Path:
        return self.root / "docker.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def stop(self) -> None:
        self.child.stop(timeout=30)


def write_noop_hook(bin_dir: Path) -> Path:
    """The nvidia hook that docker's --gpus needs on PATH; ours reads stdin and exits 0."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    hook = bin_dir / HOOK_NAME
    hook.write_text("#!/bin/sh\ncat >/dev/null\nexit 0\n")
    hook.chmod(0o755)
    return hook


def start_dockerd(root: str | os.PathLike[str], *, timeout: float = 60.0) -> Dockerd:
    """Start dockerd under `root` (a short path: unix sockets allow ~100 characters)."""
    binary = find_binary("dockerd")
    if binary is None:
        raise StackError("dockerd not found (install the docker.io package)")
    base = Path(root)
    for sub in ("data", "exec", "bin"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    write_noop_hook(base / "bin")
    env = dict(os.environ)
    env["PATH"] = f"{base / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}:/usr/sbin:/sbin"
    argv = [
        binary,
        "--iptables=false",
        "--ip6tables=false",
        "--bridge=none",
        f"--data-root={base / 'data'}",
        f"--exec-root={base / 'exec'}",
        f"--pidfile={base / 'docker.pid'}",
        f"--host=unix://{base / 'docker.sock'}",
        "--storage-driver=vfs",
    ]
    runc = find_binary("runc")
    if runc:  # lets `--runtime=nvidia` containers run here as they would on a GPU host
        argv.append(f"--add-runtime=nvidia={runc}")
    child = ChildProcess("dockerd", argv, base / "dockerd.log", env=env).start()
    engine = Dockerd(base, child)
    try:
        child.wait_until(lambda: docker_ping(engine.socket_path), timeout, "answering")
    except StackError:
        child.stop()
        raise
    return engine


def docker_ping(sock_path: str | os.PathLike[str]) -> bool:
    """True when a Docker API (dockerd, or the gateway in front of it) answers `/_ping`."""
    sock_path = Path(sock_path)
    if not sock_path.exists():
        return False
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(1)
        sock.connect(str(sock_path))
        sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        return b"200 OK" in sock.recv(256)


def ensure_busybox_image(docker_client, tag: str = BUSYBOX_IMAGE) -> str:
    """A tiny image built with `docker import` from Debian's busybox-static binary."""
    try:
        docker_client.images.get(tag)
        return tag
    except Exception:  # noqa: BLE001 - docker.errors.ImageNotFound, imported lazily
        logger.debug("image %s missing; importing it", tag)
    busybox = find_binary("busybox")
    if busybox is None:
        raise StackError("busybox not found (install the busybox-static package)")
    import io

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for folder in ("bin", "tmp", "workspace", "proc", "sys", "dev", "etc"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = (
                tarfile.DIRTYPE,
                0o1777 if folder in ("tmp", "workspace") else 0o755,
            )
            tar.addfile(info)
        tar.add(busybox, arcname="bin/busybox")
        for applet in ("sh", "sleep", "cat", "ls", "touch", "rm", "echo", "yes", "true", "env"):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
    docker_client.api.import_image_from_data(
        buffer.getvalue(), repository=tag.split(":")[0], tag=tag.split(":")[1]
    )
    return tag


# --- Prometheus and Alertmanager -------------------------------------------------------------


@dataclass
class _HttpServer:
    """A child that serves HTTP on 127.0.0.1:`port` from its own `workdir`."""

    child: ChildProcess
    port: int
    workdir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.child.stop()


@dataclass
class Prometheus(_HttpServer):
    """A Prometheus server started by `start_prometheus` (lifecycle and admin APIs off)."""

    def reload(self) -> None:
        """Re-read the config and rules: SIGHUP, as systemd's ExecReload does."""
        self.child.signal(signal.SIGHUP)


@dataclass
class Alertmanager(_HttpServer):
    """An Alertmanager started by `start_alertmanager`, behind basic auth."""

    admin: BasicAuth | None = None  # people and amtool
    sender: BasicAuth | None = None  # Prometheus
    sender_password_file: Path | None = None  # for prometheus.yml's basic_auth.password_file
    admin_http_config: Path | None = None  # for amtool --http.config.file

    @property
    def auth(self) -> tuple[str, str] | None:
        """The admin's credentials, as `requests` takes them."""
        return self.admin.as_tuple() if self.admin else None


_Server = TypeVar("_Server", bound=_HttpServer)


def _start_http_server(
    server_type: type[_Server],
    name: str,
    binary: str,
    workdir: str | os.PathLike[str],
    config_text: str,
    extra_files: Mapping[str, str] | None,
    port: int | None,
    timeout: float,
    flags: Callable[[Path, int], list[str]],
    auth: tuple[str, str] | None = None,
) -> _Server:
    """Write `<name>.yml` and the extra files into `workdir`, then start `binary` on a free port
    with `flags(workdir, port)` and wait for `/-/ready`; a child that never gets ready is stopped.
    """
    base = Path(workdir)
    base.mkdir(parents=True, exist_ok=True)
    for file_name, text in (extra_files or {}).items():
        (base / file_name).parent.mkdir(parents=True, exist_ok=True)
        (base / file_name).write_text(text)
    (base / f"{name}.yml").write_text(config_text)
    port = port or free_port()
    argv = [binary, *flags(base, port)]
    child = ChildProcess(name, argv, base / f"{name}.log", cwd=base).start()
    server = server_type(child, port, base)
    try:
        child.wait_until(lambda: _http_ok(f"{server.url}/-/ready", auth), timeout, "ready")
    except StackError:
        child.stop()
        raise
    return server


def start_prometheus(
    workdir: str | os.PathLike[str],
    config_text: str,
    *,
    port: int | None = None,
    extra_files: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> Prometheus:
    """Prometheus on a free port with its own TSDB folder; no lifecycle or admin API (any local
    user could POST /-/quit): reload it with `reload()` (SIGHUP)."""
    binary = find_binary("prometheus")
    if binary is None:
        raise StackError("prometheus not found (install the prometheus package)")
    return _start_http_server(
        Prometheus,
        "prometheus",
        binary,
        workdir,
        config_text,
        extra_files,
        port,
        timeout,
        lambda base, port: [
            f"--config.file={base / 'prometheus.yml'}",
            f"--storage.tsdb.path={base / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1d",
        ],
    )


def start_alertmanager(
    workdir: str | os.PathLike[str],
    config_text: str,
    *,
    port: int | None = None,
    extra_files: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    log_level: str = "info",
) -> Alertmanager:
    """Alertmanager on a free port, clustering off, its own storage folder, behind basic auth
    (fresh passwords for `admin` and `prometheus`, in 0600 files in `workdir`); `log_level`
    debug logs every flush of an aggregation group: tests wait on those."""
    binary = find_binary("prometheus-alertmanager", "alertmanager")
    if binary is None:
        raise StackError("alertmanager not found (install the prometheus-alertmanager package)")
    base = Path(workdir)
    admin, sender = BasicAuth(ADMIN, new_password()), BasicAuth(SENDER, new_password())
    sender_file = write_private(base / "prometheus.password", sender.password + "\n")
    admin_file = write_private(base / "admin.password", admin.password + "\n")
    write_private(base / "web.yml", web_config({ADMIN: admin.password, SENDER: sender.password}))
    http_config = write_private(base / "amtool-http.yml", http_client_config(ADMIN, admin_file))
    server = _start_http_server(
        Alertmanager,
        "alertmanager",
        binary,
        workdir,
        config_text,
        extra_files,
        port,
        timeout,
        lambda base, port: [
            f"--config.file={base / 'alertmanager.yml'}",
            f"--storage.path={base / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--web.config.file={base / 'web.yml'}",
            "--cluster.listen-address=",
            f"--log.level={log_level}",
        ],
        auth=admin.as_tuple(),
    )
    server.admin, server.sender = admin, sender
    server.sender_password_file, server.admin_http_config = sender_file, http_config
    return server
