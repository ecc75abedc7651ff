"""`container history`'s source: the audit log and the allocator's own records, filtered by
the identity behind the socket (real unprivileged users), never by what the caller says."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3

import pytest

from allocator.client import AllocatorClient, Refused
from allocator.history import HistoryLog, read_tail, select_history
from allocator.model import AllocationRequest
from allocator.service import Allocator, Settings
from allocator.store_sqlite import SqliteAllocationStore
from ds01.policy import parse_policy
from enforcer.audit import AuditLog
from tests.allocator.conftest import as_user
from tests.gateway.clients import call_as, unprivileged_users
from tests.harness.disk import small_disk_at
from tests.harness.waiting import eventually

__all__ = ["unprivileged_users"]


def audit(path, **fields):
    log = AuditLog(path)
    base = dict(container_id="c" * 64, container="job", reason="idle", fingerprint="f")
    log.write(**{**base, **fields})
    log.close()


def test_select_history_keeps_the_users_own_told_about_records_oldest_first():
    records = [
        {"time": "2026-11-30T10:00:02+00:00", "event": "stop", "user": "alice",
         "decision": "stopped", "container_id": "aa11", "reason": "idle", "deadline": 5.0},
        {"time": "2026-11-30T10:00:01+00:00", "event": "notify", "user": "alice",
         "decision": "notified", "container_id": "aa11", "reason": "idle"},
        {"time": "2026-11-30T10:00:03+00:00", "event": "stop", "user": "alice",
         "decision": "skipped: gone", "container_id": "aa11"},
        {"time": "2026-11-30T10:00:04+00:00", "event": "stop", "user": "alice",
         "decision": "dry-run: would stop", "dry_run": True},
        {"time": "2026-11-30T10:00:05+00:00", "event": "stop", "user": "bob",
         "decision": "stopped", "container_id": "bb22"},
        {"time": "2026-11-30T10:00:06+00:00", "event": "grant", "user": "alice",
         "decision": "granted", "detail": "0:1 (3g.71gb)"},
        {"time": "not a time", "event": "grant", "user": "alice", "decision": "granted"},
    ]  # fmt: skip
    mine = select_history(records, user="alice")
    assert [r["kind"] for r in mine] == ["warning", "stop", "grant"]
    assert mine[1]["deadline"] == 5.0 and mine[0]["deadline"] is None
    assert [r["kind"] for r in select_history(records, user="alice", limit=1)] == ["grant"]
    assert select_history(records, user="alice", container_id="bb") == []
    since = mine[1]["time"]
    assert [r["kind"] for r in select_history(records, user="alice", since=since)] == [
        "stop",
        "grant",
    ]
    assert [r["container_id"] for r in select_history(records, user="bob")] == ["bb22"]


def test_read_tail_survives_a_missing_file_a_torn_line_and_a_cut_start(tmp_path):
    path = tmp_path / "log.jsonl"
    assert read_tail(path) == []
    lines = [json.dumps({"n": n, "pad": "x" * 50}) for n in range(10)]
    path.write_text("\n".join(lines) + '\n{"n": 10, "torn')
    assert [r["n"] for r in read_tail(path)] == list(range(10))
    assert [r["n"] for r in read_tail(path, max_bytes=200)][-1] == 9
    assert all(isinstance(r, dict) for r in read_tail(path, max_bytes=200))


def _my_history(socket_path: str, user: str | None = None):
    try:
        return AllocatorClient(socket_path).history(user=user)
    except Refused as exc:
        return (exc.status, exc.message)


def _allocate(socket_path: str):
    return AllocatorClient(socket_path).allocate(count=1)["id"]


@pytest.mark.integration
def test_users_read_their_own_history_and_only_admins_read_anothers(
    allocator_factory, short_dir, unprivileged_users
):
    alice, bob = unprivileged_users
    audit_path = short_dir / "audit.jsonl"
    audit(audit_path, event="notify", user=alice.name, decision="notified", detail="warned")
    audit(
        audit_path, event="stop", user=alice.name, decision="stopped", detail="idle", deadline=1.0
    )
    audit(audit_path, event="stop", user=bob.name, decision="stopped", detail="bob's")
    runtime = allocator_factory(audit_log=audit_path, history_log=short_dir / "history.jsonl")
    socket_path = str(runtime.socket_path)
    assert call_as(alice, _allocate, socket_path)

    mine = call_as(alice, _my_history, socket_path)
    assert [(r["kind"], r["detail"]) for r in mine[:2]] == [
        ("warning", "warned"),
        ("stop", "idle"),
    ]
    assert mine[2]["kind"] == "grant" and mine[2]["detail"].endswith("(1g.18gb)")
    assert all(bob.name not in json.dumps(r) for r in mine)
    assert call_as(alice, _my_history, socket_path, bob.name)[0] == 403
    # root (an admin) may ask for anyone's
    admin = AllocatorClient(socket_path)
    assert [r["detail"] for r in admin.history(user=bob.name)] == ["bob's"]
    assert os.stat(audit_path).st_mode & 0o004 == 0  # the file itself stays closed to users


@pytest.mark.integration
def test_waits_are_recorded_with_their_outcome(allocator_factory, short_dir):
    runtime = allocator_factory(
        policy={"gpu_wait": "1s", "users": {"alice": "admin"}},
        history_log=short_dir / "history.jsonl",
    )
    alice = as_user(AllocatorClient(str(runtime.socket_path)), "alice")
    with pytest.raises(Refused, match="GPU allocation failed after 1 second"):
        for _ in range(64):  # every device, then one more: that one waits and times out
            alice.allocate(count=1)
    kinds = [(r["kind"], r["decision"]) for r in alice.history()]
    assert ("wait", "queued") in kinds and ("wait", "timed out") in kinds
    assert kinds[0] == ("grant", "granted")


def test_bad_history_queries_are_refused_with_the_field(allocator_factory):
    runtime = allocator_factory()
    client = AllocatorClient(str(runtime.socket_path))
    for query, field in (("limit=0", "limit"), ("limit=x", "limit"), ("since=-1", "since")):
        status, body = client.call("GET", f"/v1/history?{query}")
        assert status == 400 and body["message"].startswith(field), body


def _line(log: HistoryLog, n: int, detail: str = "") -> None:
    log.write(at=float(n), event="grant", user="alice", decision="granted", detail=detail or str(n))


def test_lines_go_out_at_a_flush_and_a_full_disk_costs_only_the_lines_of_that_flush(short_dir):
    """A grant pays no write of its own; a flush the disk cannot take is cut back out of the
    file (no torn line for the next one to follow) and counted."""
    with small_disk_at(short_dir / "disk", size="1m") as disk:
        log = HistoryLog(disk.path / "history.jsonl")
        for n in range(3):
            _line(log, n)
        assert read_tail(log.path) == []  # gathered, not written
        log.flush()
        assert [r["detail"] for r in read_tail(log.path)] == ["0", "1", "2"]
        disk.fill()
        for n in range(3, 40):
            _line(log, n, detail="x" * 200)  # more than the last page holds
        log.flush()
        assert log.errors == 37
        disk.free()
        _line(log, 40)
        log.close()
        assert [r["detail"] for r in read_tail(log.path)] == ["0", "1", "2", "40"]


@pytest.mark.integration
def test_a_grants_line_reaches_the_file_by_the_next_tick(allocator_factory, short_dir):
    path = short_dir / "history.jsonl"
    runtime = allocator_factory(history_log=path)
    AllocatorClient(str(runtime.socket_path)).allocate()
    records = eventually(lambda: read_tail(path), 10, "the ticker to write the grant's line")
    assert [r["decision"] for r in records] == ["granted"]


def test_the_history_log_without_a_path_keeps_nothing(tmp_path):
    log = HistoryLog(None)
    log.write(at=0, event="grant", user="a", decision="granted", detail="")
    assert log.path is None


def _note(socket_path: str, owner: str):
    try:
        AllocatorClient(socket_path).note_admin_stop(
            container_id="d" * 64, container="x", user=owner, detail="mine now"
        )
    except Refused as exc:
        return exc.status
    return 201


@pytest.mark.integration
def test_an_admins_stop_reaches_the_owners_history_and_only_admins_may_record_one(
    allocator_factory, short_dir, unprivileged_users
):
    alice, bob = unprivileged_users
    runtime = allocator_factory(history_log=short_dir / "history.jsonl")
    socket_path = str(runtime.socket_path)
    AllocatorClient(socket_path).note_admin_stop(
        container_id="c" * 64, container="train", user=alice.name, detail="GPU maintenance"
    )
    assert call_as(bob, _note, socket_path, alice.name) == 403  # users cannot forge one
    [stop] = call_as(alice, _my_history, socket_path)
    assert (stop["kind"], stop["reason"], stop["container"]) == ("stop", "admin", "train")
    assert stop["detail"] == "GPU maintenance"
    status, body = AllocatorClient(socket_path).call("POST", "/v1/history", {"owner": "a"})
    assert status == 400 and body["message"].startswith("container_id")


def test_read_tail_parses_only_lines_that_mention_the_user(tmp_path):
    path = tmp_path / "log.jsonl"
    lines = [
        {"user": "alice", "n": 1},
        {"user": "bob", "n": 2},
        {"user": "bob", "detail": "stopped by alice", "n": 3},  # not the quoted name
        {"user": "alice2", "n": 4},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert [r["n"] for r in read_tail(path, mentioning="alice")] == [1]
    assert [r["n"] for r in read_tail(path)] == [1, 2, 3, 4]


class DiskFullAtCommit(SqliteAllocationStore):
    """The real store, whose commit fails while `full` (as on a full disk)."""

    full = False

    @contextlib.contextmanager
    def transaction(self):
        with super().transaction() as tx:
            yield tx
            if self.full:
                raise sqlite3.OperationalError("database or disk is full")


def test_a_grant_whose_commit_fails_leaves_no_granted_line(tmp_path, sim_backend):
    store = DiskFullAtCommit(tmp_path / "a.sqlite")
    history = HistoryLog(tmp_path / "history.jsonl")
    service = Allocator(
        store=store,
        backend=sim_backend,
        policy=parse_policy({}),
        settings=Settings(inventory_refresh=0),
        history=history,
    )
    store.full = True
    with pytest.raises(sqlite3.OperationalError):
        service.submit(AllocationRequest(user="alice"), wait=False)
    history.flush()
    assert read_tail(history.path) == []
    store.full = False
    service.submit(AllocationRequest(user="alice"), wait=False)
    history.flush()
    assert [r["decision"] for r in read_tail(history.path)] == ["granted"]
