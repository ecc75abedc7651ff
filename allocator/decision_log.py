"""The allocator's decision log: every committed decision as one appended line, folded into
SQLite in batches.

A decision used to be a SQLite transaction of its own: BEGIN IMMEDIATE, a few statements and
COMMIT, about sixteen system calls and a page per touched index written to the WAL, a fifth of
the allocator's CPU per grant and release. Now a decision is one `write` of one line, with the
durability of a WAL commit under `synchronous=NORMAL` (it survives the process, not a power
cut), and the ticker folds the lines into one transaction that writes each allocation's last
state once. Lines a crash left unfolded are folded at the next start, before any decision.
Each line carries a sequence number and the database records the last one folded, so a line
is folded once however the folding and the cleanup of the files interleave with a crash.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ds01.whole_append import TornAppend, append_whole

from .model import RELEASED, Allocation
from .store_rows import allocation_from_row, allocation_row

logger = logging.getLogger(__name__)

MODE = 0o600  # every user's allocations, like the database


class DecisionLogUnwritable(OSError):
    """A decision could not be appended (a full disk, an I/O error): nothing was decided."""


class DecisionLogCorrupt(RuntimeError):
    """A line in the middle of a segment is not a decision: the admin must look at it."""


class StateInUse(RuntimeError):
    """Another allocator holds this state: two writers would each trust their own copy."""


@dataclass(frozen=True)
class LoggedDecision:
    """One committed transaction: the allocations it wrote, in their state after it."""

    seq: int
    allocations: tuple[Allocation, ...]


def encode(decision: LoggedDecision, node: str) -> bytes:
    """One JSON line: the sequence number and each allocation's columns, devices and marks."""
    rows = [
        [*allocation_row(a, node), list(a.devices), list(a.vanished)] for a in decision.allocations
    ]
    return (json.dumps({"seq": decision.seq, "allocations": rows}) + "\n").encode()


def decode(line: bytes) -> LoggedDecision:
    """The inverse of `encode`; ValueError (or KeyError, TypeError) for anything else."""
    record = json.loads(line)
    allocations = tuple(
        allocation_from_row(row[:13], row[13], row[14]) for row in record["allocations"]
    )
    seq = record["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise ValueError(f"seq is not a number: {seq!r}")
    return LoggedDecision(seq, allocations)


def parse_segment(data: bytes, name: str) -> list[LoggedDecision]:
    """The decisions in one segment's bytes. A last line without its newline is a write that a
    crash or a full disk cut short (the decision was never answered): it is dropped. A bad line
    before the last one means the file was damaged; that is refused, naming the line."""
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the data ends with a newline
    if torn:
        logger.warning("%s: dropping a cut-short last line (%d bytes)", name, len(torn))
    decisions = []
    for number, line in enumerate(lines, start=1):
        try:
            decisions.append(decode(line))
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise DecisionLogCorrupt(
                f"{name}, line {number}, is not a decision record ({exc}); move the file aside "
                "to start without the decisions from that line on"
            ) from None
    return decisions


def coalesce(decisions: Iterable[LoggedDecision]) -> list[Allocation]:
    """Each allocation's last state, released ones first: written in this order, no device is
    ever live in two rows, since the last states were all true together when logged."""
    last: dict[str, Allocation] = {}
    for decision in decisions:
        for allocation in decision.allocations:
            last.pop(allocation.id, None)
            last[allocation.id] = allocation
    ordered = list(last.values())
    return [a for a in ordered if a.state == RELEASED] + [a for a in ordered if a.state != RELEASED]


class DecisionLog:
    """Segment files `<database>-decisions.<n>` beside the database; appends go to the newest.

    Not thread-safe: the store calls it under its own lock.
    """

    def __init__(self, database: Path, node: str = "") -> None:
        self.node = node
        self._folder, self._prefix = database.parent, database.name + "-decisions."
        self._writer = self._take_writer_lock(database)
        self.pending: list[LoggedDecision] = []  # logged, not yet folded, in order
        self.last_seq = 0
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0  # bytes of whole lines in the open segment

    @staticmethod
    def _take_writer_lock(database: Path) -> int:
        """An exclusive lock for as long as this process runs: a second allocator on the same
        state refuses to start (each keeps the live allocations in memory and would trust its
        own copy). The kernel drops the lock with the process, however it ends."""
        path = database.with_name(database.name + ".lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, MODE)
        os.fchmod(fd, MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateInUse(
                f"another allocator is using {database} (it holds {path}); stop it first"
            ) from None
        return fd

    def segments(self) -> list[Path]:
        """Every segment file, oldest first."""
        found = []
        for path in self._folder.glob(self._prefix + "*"):
            suffix = path.name[len(self._prefix) :]
            if suffix.isdigit():
                found.append((int(suffix), path))
        return [path for _, path in sorted(found)]

    def recover(self, folded_through: int) -> list[LoggedDecision]:
        """The decisions the last run logged and did not fold, oldest first."""
        left: list[LoggedDecision] = []
        for path in self.segments():
            left += [
                d for d in parse_segment(path.read_bytes(), str(path)) if d.seq > folded_through
            ]
        self.last_seq = max([folded_through, *(d.seq for d in left)])
        return left

    def open(self) -> None:
        """Start a new segment after the existing ones (the old ones are removed once folded)."""
        numbers = [int(p.name[len(self._prefix) :]) for p in self.segments()]
        path = self._folder / f"{self._prefix}{max(numbers, default=0) + 1}"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, MODE)
        os.fchmod(fd, MODE)  # whatever the umask
        self.close()
        self._fd, self._path, self._size = fd, path, 0

    def append(self, allocations: Sequence[Allocation]) -> LoggedDecision:
        """Log one decision; on failure nothing of it stays in the segment (or, if the cut
        fails too, the next decision goes to a new segment), and DecisionLogUnwritable says why."""
        decision = LoggedDecision(self.last_seq + 1, tuple(allocations))
        line = encode(decision, self.node)
        try:
            if self._fd is None:
                self.open()
            assert self._fd is not None
            append_whole(self._fd, line, self._size)
        except OSError as exc:
            if isinstance(exc, TornAppend):  # its reader drops the torn last line
                logger.warning("%s: a cut-short line stays at its end", self._path)
                self.close()  # the next decision starts a new segment
            raise DecisionLogUnwritable(exc.errno, self._explain(exc)) from exc
        self._size += len(line)
        self.last_seq = decision.seq
        self.pending.append(decision)
        return decision

    def _explain(self, exc: OSError) -> str:
        where = self._path or self._folder
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"the disk under {where} is full"
        return f"cannot write {where}: {exc.strerror or exc}"

    def folded(self, through: int) -> None:
        """The database now holds every decision up to `through`: forget them, and empty the
        files once nothing in them is still pending."""
        self.pending = [d for d in self.pending if d.seq > through]
        if self.pending:
            return
        for path in self.segments():
            if path != self._path:
                path.unlink(missing_ok=True)
        if self._fd is not None and self._size:
            try:
                os.ftruncate(self._fd, 0)
                self._size = 0
            except OSError:  # the lines stay; their sequence numbers say they were folded
                logger.warning("cannot empty %s", self._path, exc_info=True)

    def close(self) -> None:
        """Close the open segment (the next append opens a new one)."""
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._path, self._size = None, None, 0

    def release(self) -> None:
        """Close everything and let another allocator take this state."""
        self.close()
        if self._writer >= 0:
            os.close(self._writer)
            self._writer = -1
