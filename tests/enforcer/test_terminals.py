"""Terminal delivery: utmp in its real on-disk format, real pseudo-terminals, mesg n, owners."""

from __future__ import annotations

import os
import select
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from enforcer.terminals import (
    USER_PROCESS,
    UTMP_RECORD,
    TerminalNotifier,
    UtmpEntry,
    pack_utmp,
    parse_utmp,
    terminal_text,
    user_ttys,
)

DEAD_PROCESS = 8


def entry(user: str, line: str, kind: int = USER_PROCESS) -> UtmpEntry:
    return UtmpEntry(kind, 4242, line, user, "10.0.0.9", 1_790_000_000)


def test_utmp_records_round_trip_in_the_384_byte_glibc_format():
    records = [entry("alice", "pts/3"), entry("bob", "tty1"), entry("", "", kind=2)]
    data = b"".join(pack_utmp(r) for r in records)
    assert UTMP_RECORD == 384 and len(data) == 3 * 384
    assert parse_utmp(data) == records


def test_a_torn_last_record_is_ignored_not_misread():
    data = pack_utmp(entry("alice", "pts/3")) + pack_utmp(entry("bob", "pts/4"))[:100]
    assert parse_utmp(data) == [entry("alice", "pts/3")]


def test_user_ttys_are_the_users_live_logins_only_once_and_never_outside_dev():
    entries = [
        entry("alice", "pts/3"),
        entry("alice", "pts/3"),
        entry("alice", "pts/9", kind=DEAD_PROCESS),  # logged out
        entry("bob", "pts/4"),
        entry("alice", "../etc/passwd"),
        entry("alice", "/etc/shadow"),
        entry("alice", "tty2"),
    ]
    assert user_ttys(entries, "alice") == ["pts/3", "tty2"]
    assert user_ttys(entries, "carol") == []


def test_terminal_text_cannot_carry_escape_sequences_from_container_names_or_summaries():
    text = terminal_text(
        severity="warning", container="evil\x1b[2J", message="idle\x1b]0;owned\x07 now", stamp="t"
    ).decode()
    assert "\x1b" not in text and "owned" in text
    assert text.startswith("\r\n\aMessage from ds01 at t (warning) about container evil?[2J:")


@dataclass
class Pty:
    master: int
    slave: int
    line: str  # below /dev

    def read(self, timeout: float) -> bytes:
        ready, _, _ = select.select([self.master], [], [], timeout)
        return os.read(self.master, 65536) if ready else b""

    def pending(self) -> bytes:
        return self.read(0)


@pytest.fixture
def ptys() -> Iterator[list[Pty]]:
    made: list[Pty] = []

    def close() -> None:
        for p in made:
            os.close(p.master)
            os.close(p.slave)

    def make() -> Pty:
        master, slave = os.openpty()
        os.chmod(os.ttyname(slave), 0o620)  # mesg y
        made.append(Pty(master, slave, os.ttyname(slave).removeprefix("/dev/")))
        return made[-1]

    yield [make(), make(), make()]
    close()


def notifier(tmp_path: Path, entries: list[UtmpEntry], uids: dict[str, int]) -> TerminalNotifier:
    utmp = tmp_path / "utmp"
    utmp.write_bytes(b"".join(pack_utmp(e) for e in entries))
    return TerminalNotifier(str(utmp), uid_of=uids.get)


def test_every_terminal_of_the_user_gets_the_message_and_nobody_elses(tmp_path, ptys):
    mine1, mine2, other = ptys
    me = os.getuid()
    entries = [entry("alice", mine1.line), entry("bob", other.line), entry("alice", mine2.line)]
    # bob's terminal is also ours on this machine: only utmp's user decides, and it says bob
    sender = notifier(tmp_path, entries, {"alice": me, "bob": me})
    deliveries = sender.send("alice", b"hello alice\r\n")
    assert [(d.tty, d.result) for d in deliveries] == [
        (mine1.line, "written"),
        (mine2.line, "written"),
    ]
    assert b"hello alice" in mine1.read(5) and b"hello alice" in mine2.read(5)
    assert other.pending() == b""


def test_mesg_n_is_respected(tmp_path, ptys):
    quiet = ptys[0]
    os.chmod(os.ttyname(quiet.slave), 0o600)  # what `mesg n` does
    sender = notifier(tmp_path, [entry("alice", quiet.line)], {"alice": os.getuid()})
    [delivery] = sender.send("alice", b"hello\r\n")
    assert delivery.result == "mesg_off"
    assert quiet.pending() == b""
    assert not os.stat(os.ttyname(quiet.slave)).st_mode & stat.S_IWGRP


def test_a_stale_utmp_line_whose_terminal_now_belongs_to_someone_else_is_not_written(
    tmp_path, ptys
):
    reused = ptys[0]
    someone_else = os.getuid() + 4242
    sender = notifier(tmp_path, [entry("alice", reused.line)], {"alice": someone_else})
    [delivery] = sender.send("alice", b"hello\r\n")
    assert delivery.result == "not_owner"
    assert reused.pending() == b""


def test_a_vanished_terminal_is_a_failure_and_no_login_is_no_delivery(tmp_path):
    sender = notifier(tmp_path, [entry("alice", "pts/98765")], {"alice": os.getuid()})
    [delivery] = sender.send("alice", b"x")
    assert delivery.result == "failed" and "open" in delivery.detail
    assert sender.send("carol", b"x") == []  # unknown account: nobody to tell
    assert TerminalNotifier(str(tmp_path / "no-utmp"), uid_of={"a": 0}.get).send("a", b"x") == []
