"""Bind-mount sources pinned at create time, so a symlink swapped in later cannot redirect them.

dockerd resolves a bind source only when the container starts, as root. A user who made
`~/d` pass the create check could replace it with a link to `/etc` before `docker start`.
So the gateway opens the checked source once, confirms where the kernel says the open file
is, bind-mounts exactly that file onto a root-owned pin, and gives dockerd the pin instead.
Pins of removed containers are swept.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

LABEL_PINS = "ds01.pins"  # the pin token of a container's bind sources
MS_BIND = 4096
MNT_DETACH = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class PinError(OSError):
    """A source could not be pinned; the message names the path."""


def _mount_bind(source: str, target: str) -> None:
    if _libc.mount(source.encode(), target.encode(), None, MS_BIND, None) != 0:
        err = ctypes.get_errno()
        raise PinError(err, f"bind mount of {source}: {os.strerror(err)}")


def _unmount(target: str) -> None:
    if _libc.umount2(target.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (22, 2):  # EINVAL: not a mount point; ENOENT: gone
            raise PinError(err, f"unmount of {target}: {os.strerror(err)}")


@dataclass(frozen=True)
class Opened:
    """A source opened without following it again: the fd and where the kernel says it is."""

    fd: int
    real: str
    is_dir: bool


def open_source(path: str) -> Opened:
    """Open `path` (O_PATH) and read back its true location from /proc/self/fd."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        raise PinError(2, f"{path} does not exist; create it first") from None
    real = os.readlink(f"/proc/self/fd/{fd}")
    return Opened(fd, real, stat.S_ISDIR(os.fstat(fd).st_mode))


class BindPins:
    """Root-owned pin points under `root`, one folder per create (a token)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)  # dockerd (root) mounts from it; nobody lists it
        self._lock = threading.Lock()

    def new_token(self) -> str:
        token = secrets.token_hex(8)
        (self.root / token).mkdir(mode=0o700)
        return token

    def pin(self, token: str, index: int, opened: Opened) -> str:
        """Bind-mount the opened file onto pin `index` of `token`; returns the pin's path."""
        target = self.root / token / str(index)
        if opened.is_dir:
            target.mkdir(mode=0o755)
        else:
            target.touch(mode=0o644)
        _mount_bind(f"/proc/self/fd/{opened.fd}", str(target))
        return str(target)

    def release(self, token: str) -> None:
        """Unmount and remove every pin of `token`."""
        folder = self.root / token
        if not folder.is_dir():
            return
        for entry in folder.iterdir():
            _unmount(str(entry))
        shutil.rmtree(folder, ignore_errors=True)

    def sweep(self, tokens_in_use: Iterable[str], *, older_than: float = 60.0) -> int:
        """Release pins no container names any more (created at least `older_than` ago)."""
        keep = set(tokens_in_use)
        released = 0
        now = time.time()
        with self._lock:
            for folder in self.root.iterdir():
                if folder.name in keep or not folder.is_dir():
                    continue
                if now - folder.stat().st_mtime < older_than:
                    continue  # a create still in flight
                try:
                    self.release(folder.name)
                    released += 1
                except PinError:
                    logger.exception("could not release pin %s", folder.name)
        return released


class PinSweeper:
    """Every `interval` seconds, release the pins of containers that no longer exist."""

    def __init__(
        self, pins: BindPins, tokens_in_use: Callable[[], Iterable[str]], interval: float
    ) -> None:
        self.pins, self.tokens_in_use, self.interval = pins, tokens_in_use, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gateway-pins", daemon=True)
        self.errors = 0

    def start(self) -> PinSweeper:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                released = self.pins.sweep(self.tokens_in_use())
                if released:
                    logger.info("released the bind pins of %d removed containers", released)
            except Exception:
                self.errors += 1
                logger.exception("sweeping bind pins failed")

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(RuntimeError):
            self._thread.join(5)
