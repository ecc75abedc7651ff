"""Real Docker clients, run by real unprivileged users: what the compatibility matrix drives.

Helpers and fixtures only (no tests). Clients are the binaries users really have — Debian's
docker CLI 20.10, a newer docker CLI where one is installed, docker-compose 1.29, the Dev
Containers CLI, the Python Docker SDK — and they run as users outside the `docker` group, so
the only way in is a socket anyone may open. scripts/install-deps.sh installs the required ones.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import io
import json
import logging
import multiprocessing
import os
import pty
import pwd
import re
import select
import shlex
import shutil
import signal
import struct
import subprocess
import tarfile
import tempfile
import termios
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ds01.stack import find_binary
from tests.harness.components import missing, require_binary, require_root

T = TypeVar("T")
logger = logging.getLogger(__name__)

DEBIAN_DOCKER = "/usr/bin/docker"  # package docker.io (20.10 on Debian 12): required
NEWER_DOCKER = "/usr/local/bin/docker"  # a newer CLI, where an admin installed one: optional
DEVCONTAINER_CLI_VERSION = "0.83.0"  # pinned in install-deps.sh; the last to run on Node 18
COMPAT_USER_NAMES = ("ds01alice", "ds01bob")
DEVCONTAINER_IMAGE = "ds01/busybox-dev:latest"
USER_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class CompatUser:
    """A local login with a home and no `docker` group: identity comes from the socket peer."""

    name: str
    uid: int
    gid: int
    home: Path


def lookup_user(name: str) -> CompatUser:
    entry = pwd.getpwnam(name)
    return CompatUser(entry.pw_name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))


def _groups_of(name: str, gid: int) -> set[str]:
    names = {group.gr_name for group in grp.getgrall() if name in group.gr_mem}
    names.add(grp.getgrgid(gid).gr_name)
    return names


def ensure_user(name: str) -> CompatUser:
    """Create `name` with a home under /home unless it exists; refuse one in the docker group."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--create-home", "--shell", "/bin/sh", name],
            check=True,
            capture_output=True,
        )
    user = lookup_user(name)
    if "docker" in _groups_of(name, user.gid):
        pytest.fail(f"user {name} is in the docker group; the matrix needs users outside it")
    user.home.mkdir(mode=0o755, exist_ok=True)
    os.chown(user.home, user.uid, user.gid)
    return user


@pytest.fixture(scope="session")
def unprivileged_users() -> tuple[CompatUser, ...]:
    """Two users outside the docker group (left in place: creating them is idempotent)."""
    require_root("creating unprivileged users")
    if find_binary("useradd") is None or find_binary("runuser") is None:
        missing("useradd/runuser are not installed (package passwd, util-linux)")
    return tuple(ensure_user(name) for name in COMPAT_USER_NAMES)


def _as_user(user: CompatUser | str) -> CompatUser:
    return user if isinstance(user, CompatUser) else lookup_user(user)


def user_env(user: CompatUser | str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean login-like environment: nothing of root's leaks into the user's client."""
    who = _as_user(user)
    base = {
        "PATH": USER_PATH,
        "HOME": str(who.home),
        "USER": who.name,
        "LOGNAME": who.name,
        "LANG": "C.UTF-8",
    }
    base.update(env or {})
    return base


def _runuser_argv(user: CompatUser, argv: Sequence[str]) -> list[str]:
    runuser = find_binary("runuser") or "/usr/sbin/runuser"  # in sbin, off the users' PATH
    return [runuser, "-u", user.name, "--", *argv]


def run_as(
    user: CompatUser | str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    input: str | bytes | None = None,
    timeout: float = 60,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess:
    """Run `argv` as `user` (runuser, no docker group) and capture its output; never raises."""
    who = _as_user(user)
    return subprocess.run(
        _runuser_argv(who, argv),
        env=user_env(who, env),
        input=input,
        timeout=timeout,
        cwd=cwd or who.home,
        capture_output=True,
        text=not isinstance(input, bytes),
        check=False,
    )


def start_as(
    user: CompatUser | str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.Popen:
    """Start a long-running client (`logs -f`, `events`) as `user`; the caller stops it."""
    who = _as_user(user)
    return subprocess.Popen(
        _runuser_argv(who, argv),
        env=user_env(who, env),
        cwd=cwd or who.home,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_in_pty_as(
    user: CompatUser | str,
    argv: Sequence[str],
    *,
    keystrokes: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess:
    """Run `argv` as `user` on a pseudo-terminal (`docker run -it` refuses a pipe) via script(1).

    `keystrokes` are typed into the terminal; script's exit status is the client's (-e).
    """
    if find_binary("script") is None:
        missing("script is not installed (package bsdutils)")
    return run_as(
        user,
        ["script", "--quiet", "--return", "--command", shlex.join(argv), "/dev/null"],
        env=env,
        input=keystrokes,
        timeout=timeout,
    )


def _take_terminal() -> None:
    """In the child, after setsid: make stdin the controlling terminal (for SIGWINCH)."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class TerminalSession:
    """A client on a pseudo-terminal of a given size, driven like a person: wait, then type.

    For what script(1) cannot do: wait for a prompt before typing, detach keys, resizes.
    """

    def __init__(
        self,
        user: CompatUser | str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        rows: int = 40,
        cols: int = 132,
    ) -> None:
        who = _as_user(user)
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.process = subprocess.Popen(
            _runuser_argv(who, argv),
            env=user_env(who, {"TERM": "xterm", **(env or {})}),
            cwd=who.home,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=_take_terminal,
        )
        os.close(slave)
        self.seen = b""

    def resize(self, rows: int, cols: int) -> None:
        """As a terminal window does: the kernel sends SIGWINCH to the client, which tells
        dockerd the new size (a resize request beside the hijacked stream)."""
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.size = (rows, cols)

    def nudge(self) -> None:
        """SIGWINCH again at the same size, as a window manager does on every drag: a client
        that missed the first signal (it arrived while its handler was being set up) sends
        the size now."""
        if self.process.poll() is None:
            os.killpg(os.getpgid(self.process.pid), signal.SIGWINCH)

    def expect(self, text: str, timeout: float = 30) -> str:
        """Read until `text` has appeared since the last expect; the output up to it."""
        wanted, deadline = text.encode(), time.monotonic() + timeout
        while wanted not in self.seen:
            left = deadline - time.monotonic()
            ready = select.select([self.master], [], [], max(0.0, left))[0] if left > 0 else []
            chunk = self._read() if ready else b""
            if not chunk:
                raise AssertionError(
                    f"no {text!r} on the terminal; it showed {self.seen[-2000:]!r}"
                )
            self.seen += chunk
        before, _, self.seen = self.seen.partition(wanted)
        return before.decode(errors="replace")

    def ask_until(self, command: str, wanted: str, *, prompt: str = "# ", timeout: float = 30):
        """Type `command` until its output shows `wanted` (a size set by a resize request
        arrives a moment after the shell's prompt); the output that showed it."""
        deadline = time.monotonic() + timeout
        tries = 0
        while True:
            self.send(command + "\n")
            shown = self.expect(prompt, max(0.1, deadline - time.monotonic()))
            if wanted in shown:
                return shown
            if time.monotonic() >= deadline:
                raise AssertionError(f"{command!r} never showed {wanted!r}; last: {shown!r}")
            tries += 1
            if tries % 10 == 0:  # a second after the resize: signal the window size again
                self.nudge()
            time.sleep(0.1)

    def _read(self) -> bytes:
        try:
            return os.read(self.master, 65536)
        except OSError:  # EIO: every writer of the terminal has gone
            return b""

    def send(self, keys: str | bytes) -> None:
        os.write(self.master, keys.encode() if isinstance(keys, str) else keys)

    def wait(self, timeout: float = 30) -> int:
        """The client's exit status, the terminal drained meanwhile (a full one would block it)."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            if select.select([self.master], [], [], 0.1)[0]:
                self.seen += self._read()
        return self.process.wait(timeout=max(0.1, deadline - time.monotonic()))

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        with contextlib.suppress(OSError):
            os.close(self.master)


def _become(uid: int, gid: int, home: str) -> None:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    os.environ["HOME"] = home


def call_as(user: CompatUser | str, fn: Callable[..., T], *args: Any, timeout: float = 60) -> T:
    """Call `fn(*args)` in a forked child that has become `user`: the Python SDK as that user.

    Forking keeps this interpreter's docker package (the venv may live where users cannot
    read); `fn` must be a module-level function and its result picklable.
    """
    who = _as_user(user)
    context = multiprocessing.get_context("fork")
    with context.Pool(1, initializer=_become, initargs=(who.uid, who.gid, str(who.home))) as pool:
        return pool.apply_async(fn, args).get(timeout)


@pytest.fixture
def user_workdir() -> Iterator[Callable[[CompatUser], Path]]:
    """Factory: a fresh folder owned by the user inside their home (allowed bind-mount source)."""
    made: list[Path] = []

    def make(user: CompatUser) -> Path:
        path = Path(tempfile.mkdtemp(prefix="compat-", dir=user.home))
        os.chown(path, user.uid, user.gid)
        made.append(path)
        return path

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


def write_as_owner(user: CompatUser, path: Path, text: str | bytes) -> Path:
    """Write a file the user owns (compose files, Dockerfiles, devcontainer.json, payloads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for folder in [path.parent, *path.parent.parents]:
        if folder == user.home or folder == Path("/"):
            break
        os.chown(folder, user.uid, user.gid)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    os.chown(path, user.uid, user.gid)
    return path


def traversable_by_all(path: Path) -> None:
    """Open x on every parent of a socket (mkdtemp makes 0700 folders) so users can reach it."""
    for folder in [path.parent, *path.parent.parents]:
        mode = folder.stat().st_mode
        if mode & 0o001 == 0:
            folder.chmod(mode | 0o001)


# --- client locators -----------------------------------------------------------------------


def _cli_version(path: str) -> str | None:
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=20, check=False
        ).stdout
    except OSError:
        return None
    found = re.search(r"version (\d+\.\d+)", out)
    return found.group(1) if found else None


def docker_clis() -> list[tuple[str, str]]:
    """(label, path) per docker CLI: Debian's always (a test needing it fails in CI if
    absent), a newer one only where installed. Safe at collection time (never skips)."""
    debian = _cli_version(DEBIAN_DOCKER) if os.access(DEBIAN_DOCKER, os.X_OK) else None
    clis = [(f"docker-{debian or 'debian'}", DEBIAN_DOCKER)]
    if os.access(NEWER_DOCKER, os.X_OK) and not _same_file(NEWER_DOCKER, DEBIAN_DOCKER):
        newer = _cli_version(NEWER_DOCKER)
        if newer and newer != debian:
            clis.append((f"docker-{newer}", NEWER_DOCKER))
    return clis


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def require_docker_cli(path: str) -> str:
    """The CLI at `path`, or skip (fail under CI=true) when it is the required one and absent."""
    if not os.access(path, os.X_OK):
        missing(f"docker CLI {path} is not installed (package docker.io)")
    return path


def cli_supports_buildkit(path: str) -> bool:
    """The 20.10 CLI has BuildKit built in; newer ones need the buildx plugin for it."""
    if subprocess.run([path, "buildx", "version"], capture_output=True, check=False).returncode:
        return (_cli_version(path) or "99").split(".")[0] in ("19", "20")
    return True


def gpu_compose_file(image: str, *, service: str, command: list[str], count: int | str) -> str:
    """A compose file of one service reserving `count` GPUs (1.29's `deploy.resources` form)."""
    return (
        'version: "2.4"\n'
        "services:\n"
        f"  {service}:\n"
        f"    image: {image}\n"
        f"    command: {json.dumps(command)}\n"
        "    network_mode: none\n"
        "    deploy:\n"
        "      resources:\n"
        "        reservations:\n"
        "          devices:\n"
        "            - capabilities: [gpu]\n"
        f"              count: {count}\n"
    )


def compose_binary() -> str:
    """docker-compose 1.29 (Debian's, Python; speaks API 1.41 through docker-py)."""
    return require_binary("docker-compose")


def devcontainer_binary() -> str:
    """The Dev Containers CLI (npm @devcontainers/cli, installed globally by install-deps)."""
    return require_binary("devcontainer")


# --- images --------------------------------------------------------------------------------


def ensure_devcontainer_image(docker_client, busybox_path: str | None = None) -> str:
    """Busybox with every applet and an /etc/passwd: the Dev Containers CLI execs a shell
    server that needs uname, grep, sed, mkdir, id and a passwd entry for the remote user."""
    try:
        docker_client.images.get(DEVCONTAINER_IMAGE)
        return DEVCONTAINER_IMAGE
    except Exception:  # noqa: BLE001 - docker.errors.ImageNotFound, imported lazily
        logger.debug("image %s missing; importing it", DEVCONTAINER_IMAGE)
    busybox = busybox_path or require_binary("busybox")
    applets = subprocess.run(
        [busybox, "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for folder in ("bin", "tmp", "root", "workspaces", "proc", "sys", "dev", "etc"):
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if folder in ("tmp", "workspaces") else 0o755
            tar.addfile(info)
        tar.add(busybox, arcname="bin/busybox")
        for applet in applets:
            if applet != "busybox":
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
        for name, text in (
            ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
            ("etc/group", "root:x:0:\n"),
        ):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    repository, tag = DEVCONTAINER_IMAGE.split(":")
    docker_client.api.import_image_from_data(buffer.getvalue(), repository=repository, tag=tag)
    return DEVCONTAINER_IMAGE
