"""Tell the owner on every terminal they have open, as write(1)/wall(1) do.

The user's terminals come from utmp (`parse_utmp` reads glibc's on-disk records, a pure
function); a terminal is written only when the device node still belongs to that user (a
stale utmp line must never reach someone else) and has the group-write bit (`mesg y`).
Writes are non-blocking: a stuck terminal costs one failed delivery, never a stop.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# struct utmp on Linux (glibc, 64-bit and 32-bit alike: ut_tv is two int32): 384 bytes.
UTMP_FORMAT = "<hhi32s4s32s256shhiii4i20s"
UTMP_RECORD = struct.calcsize(UTMP_FORMAT)
USER_PROCESS = 7
MAX_MESSAGE_BYTES = 2048


@dataclass(frozen=True)
class UtmpEntry:
    kind: int
    pid: int
    line: str  # the tty below /dev, e.g. "pts/3"
    user: str
    host: str
    login_time: int


@dataclass(frozen=True)
class Delivery:
    """One terminal's outcome: written, skipped (mesg n, not the owner's) or failed."""

    tty: str
    result: str  # written | mesg_off | not_owner | failed
    detail: str = ""


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def parse_utmp(data: bytes) -> list[UtmpEntry]:
    """Every whole record of a utmp file (a torn last record is ignored)."""
    entries = []
    for offset in range(0, len(data) - UTMP_RECORD + 1, UTMP_RECORD):
        fields = struct.unpack_from(UTMP_FORMAT, data, offset)
        kind, _pad, pid, line, _id, user, host = fields[:7]
        entries.append(UtmpEntry(kind, pid, _text(line), _text(user), _text(host), fields[10]))
    return entries


def pack_utmp(entry: UtmpEntry) -> bytes:
    """One record in the on-disk format (what login, sshd and tests write)."""
    return struct.pack(
        UTMP_FORMAT,
        entry.kind, 0, entry.pid, entry.line.encode(), entry.line[-4:].encode(),
        entry.user.encode(), entry.host.encode(), 0, 0, 0, entry.login_time, 0,
        0, 0, 0, 0, b"",
    )  # fmt: skip


def user_ttys(entries: Iterable[UtmpEntry], user: str) -> list[str]:
    """The terminals a user is logged in on (login sessions only), once each, in order."""
    lines: list[str] = []
    for entry in entries:
        if entry.kind != USER_PROCESS or entry.user != user or not entry.line:
            continue
        if ".." in entry.line.split("/") or entry.line.startswith("/"):
            continue  # utmp is written by root, but a tty path never leaves /dev
        if entry.line not in lines:
            lines.append(entry.line)
    return lines


def terminal_text(*, severity: str, container: str, message: str, stamp: str) -> bytes:
    """The banner users see, write(1)-style: CRLF line ends, no control bytes from input."""
    clean = "".join(ch if ch.isprintable() else " " for ch in message)
    name = "".join(ch if ch.isprintable() else "?" for ch in container)
    text = f"\r\n\aMessage from ds01 at {stamp} ({severity}) about container {name}:\r\n{clean}\r\n"
    return text.encode()[:MAX_MESSAGE_BYTES]


class TerminalNotifier:
    """Writes a message to each terminal of one user; root (or group tty) is needed."""

    def __init__(
        self,
        utmp_path: str,
        *,
        dev_root: str = "/dev",
        uid_of: Callable[[str], int | None] | None = None,
    ) -> None:
        self.utmp_path = utmp_path
        self.dev_root = dev_root
        self._uid_of = uid_of or _uid_of

    def terminals_of(self, user: str) -> list[str]:
        try:
            with open(self.utmp_path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return []  # no logins recorded: nobody to tell on a terminal
        return user_ttys(parse_utmp(data), user)

    def send(self, user: str, text: bytes) -> list[Delivery]:
        """Write to every terminal of `user`; OSError reading utmp propagates (a failure)."""
        uid = self._uid_of(user)
        if uid is None:
            return []
        return [self._write(line, uid, text) for line in self.terminals_of(user)]

    def _write(self, line: str, uid: int, text: bytes) -> Delivery:
        path = os.path.join(self.dev_root, line)
        flags = os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            return Delivery(line, "failed", f"open: {exc.strerror}")
        try:
            info = os.fstat(fd)  # of what was opened: no swap between check and write
            if not stat.S_ISCHR(info.st_mode) or info.st_uid != uid:
                return Delivery(line, "not_owner", "the terminal belongs to someone else now")
            if not info.st_mode & stat.S_IWGRP:
                return Delivery(line, "mesg_off", "messages refused (mesg n)")
            written = os.write(fd, text)
        except OSError as exc:
            reason = "terminal busy" if exc.errno == errno.EAGAIN else exc.strerror
            return Delivery(line, "failed", f"write: {reason}")
        finally:
            os.close(fd)
        if written < len(text):
            return Delivery(line, "failed", f"write: only {written} of {len(text)} bytes")
        return Delivery(line, "written")


def _uid_of(user: str) -> int | None:
    import pwd

    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None
