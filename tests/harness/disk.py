"""A tiny tmpfs that a test fills up (every write: ENOSPC) and frees again; root only."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.harness.components import require_binary, require_root


@dataclass
class SmallDisk:
    path: Path

    def fill(self) -> None:
        fd = os.open(self.path / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc  # full, which is the point
        finally:
            os.close(fd)

    def free(self) -> None:
        (self.path / "filler").unlink(missing_ok=True)


@contextmanager
def small_disk_at(path: Path, size: str = "1m") -> Iterator[SmallDisk]:
    """Mount a `size` tmpfs on `path` (created if missing); unmounted on the way out."""
    require_root("mounting a tmpfs")
    mount = require_binary("mount")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run([mount, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield SmallDisk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
