"""Tell the owner inside the container: append a line to a notice file via the archive API.

No shell, no exec: the file is read with `get_archive` and written back with `put_archive`,
which works on any image (even without /bin/sh) and on stopped containers. The file keeps its
owner and mode; a new one is 0644 so whoever uses the container can read it.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
from dataclasses import dataclass

import docker

MAX_NOTICE_BYTES = 64 * 1024  # the file keeps its newest lines within this size


class NoticeError(RuntimeError):
    """The notice could not be written (no such folder, read-only filesystem …)."""


@dataclass(frozen=True)
class _Existing:
    content: bytes
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


def _read(container, path: str) -> _Existing:
    try:
        stream, _ = container.get_archive(path)
    except docker.errors.NotFound:
        return _Existing(b"")
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.next()
        if member is None or not member.isfile():
            raise NoticeError(f"{path} exists but is not a regular file")
        handle = tar.extractfile(member)
        content = handle.read() if handle else b""
        return _Existing(content, member.mode & 0o7777, member.uid, member.gid)


def _trim(content: bytes) -> bytes:
    if len(content) <= MAX_NOTICE_BYTES:
        return content
    tail = content[-MAX_NOTICE_BYTES:]
    return tail[tail.find(b"\n") + 1 :]


def append_notice(container, path: str, line: str, *, mtime: float) -> None:
    """Append one line to `path` inside the container (a docker-py Container)."""
    existing = _read(container, path)
    content = existing.content
    if content and not content.endswith(b"\n"):
        content += b"\n"
    content = _trim(content + line.rstrip("\n").encode() + b"\n")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(posixpath.basename(path))
        info.size, info.mode, info.mtime = len(content), existing.mode, int(mtime)
        info.uid, info.gid = existing.uid, existing.gid
        tar.addfile(info, io.BytesIO(content))
    try:
        ok = container.put_archive(posixpath.dirname(path) or "/", buffer.getvalue())
    except docker.errors.NotFound:
        raise NoticeError(f"{posixpath.dirname(path)} does not exist in the container") from None
    except docker.errors.APIError as exc:
        raise NoticeError(f"cannot write {path}: {exc.explanation or exc}") from None
    if not ok:
        raise NoticeError(f"cannot write {path}: put_archive refused")
