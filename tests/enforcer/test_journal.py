"""The SQLite journal: a repeat is a duplicate only while its row is open; a skip is never final."""

from __future__ import annotations

from types import MappingProxyType

from enforcer.journal import Journal
from enforcer.payload import Alert


def alert(
    fingerprint: str = "fp",
    starts_at: float = 100.0,
    cid: str = "c" * 64,
    reason: str = "idle",
    action: str = "stop",
) -> Alert:
    labels = {"container_id": cid, "reason": reason, "action": action}
    return Alert(
        "firing", fingerprint, starts_at, cid, reason, action, MappingProxyType(labels), {}
    )


def test_repeats_of_a_pending_alert_are_journaled_once(tmp_path):
    journal = Journal(tmp_path / "j.db")

    assert journal.enqueue("stop", [alert(), alert()], now=1.0) == [True, False]
    assert journal.enqueue("stop", [alert()], now=2.0) == [False]
    # Whatever startsAt a sender claims, the open row answers for it: nothing new to decide.
    assert journal.enqueue("stop", [alert(starts_at=0.0)], now=2.0) == [False]
    assert journal.enqueue("notify", [alert(action="notify")], now=2.0) == [True]
    assert journal.stats().depth == 2


def test_an_inconsistent_alert_never_blocks_the_real_one(tmp_path):
    """Same fingerprint but other facts (container, reason): a job of its own."""
    journal = Journal(tmp_path / "j.db")
    journal.enqueue("stop", [alert(reason="idle")], now=1.0)

    assert journal.enqueue("stop", [alert(reason="max_runtime")], now=2.0) == [True]
    assert journal.enqueue("stop", [alert(cid="d" * 64)], now=2.0) == [True]


def test_a_skip_is_never_final(tmp_path):
    journal = Journal(tmp_path / "j.db")
    journal.enqueue("stop", [alert(starts_at=0.0)], now=1.0)  # e.g. injected, too early
    [job] = journal.due(now=1.0)
    journal.finish(job.id, decision="skipped: not past its idle deadline", detail="", now=2.0)

    assert journal.enqueue("stop", [alert(starts_at=0.0)], now=3.0) == [True]


def test_a_stop_is_watched_and_repeats_wait_for_the_watch(tmp_path):
    journal = Journal(tmp_path / "j.db")
    journal.enqueue("stop", [alert()], now=1.0)
    [job] = journal.due(now=1.0)
    journal.watch(job.id, decision="stopped", detail="", now=2.0, due_at=17.0)

    assert journal.stats().depth == 0  # a watch is not a pending action
    assert journal.enqueue("stop", [alert()], now=3.0) == [False]
    assert journal.due(now=16.0) == []
    [watched] = journal.due(now=17.0)
    assert (watched.state, watched.watch_started) == ("watching", 2.0)
    journal.end_watch(job.id, note="stopped and no longer reported", now=18.0)
    assert journal.decisions()[0]["decision"] == "stopped"
    assert journal.enqueue("stop", [alert()], now=19.0) == [True]


def test_a_warning_is_delivered_once_per_firing(tmp_path):
    journal = Journal(tmp_path / "j.db")
    warning = alert(action="notify")
    journal.enqueue("notify", [warning], now=1.0)
    [job] = journal.due(now=1.0)
    journal.finish(job.id, decision="notified", detail="", now=2.0)

    assert journal.enqueue("notify", [warning], now=3.0) == [False]
    assert journal.enqueue("notify", [alert(action="notify", starts_at=500.0)], now=3.0) == [True]


def test_pending_jobs_survive_a_restart(tmp_path):
    first = Journal(tmp_path / "j.db")
    first.enqueue("stop", [alert("a"), alert("b")], now=10.0)
    [job_a, _] = first.due(now=10.0)
    first.finish(job_a.id, decision="stopped", detail="", now=11.0)
    first.close()

    again = Journal(tmp_path / "j.db")

    [pending] = again.due(now=20.0)
    assert pending.alert.fingerprint == "b"
    assert pending.alert == alert("b")
    assert again.enqueue("stop", [alert("b")], now=21.0) == [False]
    assert again.stats().depth == 1
    assert again.stats().oldest_received_at == 10.0


def test_a_version_1_journal_is_migrated_with_its_rows(tmp_path):
    import sqlite3

    path = tmp_path / "j.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, "
        "fingerprint TEXT NOT NULL, starts_at REAL NOT NULL, container_id TEXT NOT NULL, "
        "alert TEXT NOT NULL, received_at REAL NOT NULL, due_at REAL NOT NULL, "
        "state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0, "
        "last_error TEXT, decision TEXT, detail TEXT, finished_at REAL, "
        "UNIQUE (fingerprint, starts_at, kind));"
    )
    import json

    old.execute(
        "INSERT INTO jobs (kind, fingerprint, starts_at, container_id, alert, received_at, "
        "due_at) VALUES ('stop', 'fp', 100.0, ?, ?, 1.0, 1.0)",
        ("c" * 64, json.dumps(alert().to_json())),
    )
    old.commit()
    old.close()

    journal = Journal(path)

    [job] = journal.due(now=2.0)
    assert job.alert == alert()
    journal.finish(job.id, decision="skipped: gone", detail="", now=3.0)
    assert journal.enqueue("stop", [alert()], now=4.0) == [True]  # the unique key is gone


def test_retry_later_postpones_and_counts_attempts(tmp_path):
    journal = Journal(tmp_path / "j.db")
    journal.enqueue("stop", [alert()], now=10.0)
    [job] = journal.due(now=10.0)

    journal.retry_later(job.id, error="docker unreachable", due_at=15.0)

    assert journal.due(now=14.0) == []
    [again] = journal.due(now=15.0)
    assert again.attempts == 1
    assert journal.next_due_at() == 15.0
    assert journal.decisions()[0]["last_error"] == "docker unreachable"


def test_due_respects_exclusions_and_future_jobs(tmp_path):
    journal = Journal(tmp_path / "j.db")
    journal.enqueue("stop", [alert("a"), alert("b")], now=10.0)
    journal.enqueue("remove", [alert("a")], now=10.0, due_at=50.0)
    [a, b] = journal.due(now=10.0)

    assert [j.id for j in journal.due(now=10.0, exclude=[a.id])] == [b.id]
    assert len(journal.due(now=50.0)) == 3


def test_prune_forgets_old_decisions_only(tmp_path):
    journal = Journal(tmp_path / "j.db")
    journal.enqueue("stop", [alert("old"), alert("new"), alert("pending")], now=1.0)
    old, new, _ = journal.due(now=1.0)
    journal.finish(old.id, decision="stopped", detail="", now=5.0)
    journal.finish(new.id, decision="stopped", detail="", now=50.0)

    assert journal.prune(finished_before=10.0) == 1
    assert [r["fingerprint"] for r in journal.decisions()] == ["new", "pending"]


def test_the_journal_and_its_wal_are_private(tmp_path):
    path = tmp_path / "j.db"
    path.touch(mode=0o644)  # an older journal, made under a 022 umask
    path.chmod(0o644)
    journal = Journal(path)
    journal.enqueue("stop", [alert()], now=1.0)

    for file in (path, tmp_path / "j.db-wal", tmp_path / "j.db-shm"):
        assert file.stat().st_mode & 0o777 == 0o600, file


_BURST_CHILD = """
import sys, threading
from types import MappingProxyType
sys.path.insert(0, {repo!r})
from enforcer.journal import Journal
from enforcer.payload import Alert

journal = Journal({path!r})
out = threading.Lock()

def post(thread):
    for n in range(100000):
        fp = f"t{{thread}}-{{n}}"
        labels = {{"container_id": "c" * 64, "reason": "idle", "action": "stop"}}
        alert = Alert("firing", fp, 1.0, "c" * 64, "idle", "stop", MappingProxyType(labels), {{}})
        journal.enqueue("stop", [alert], now=1.0)
        with out:  # the acknowledgement: only after enqueue returned
            sys.stdout.write(fp + "\\n")
            sys.stdout.flush()

for t in range(8):
    threading.Thread(target=post, args=(t,), daemon=True).start()
threading.Event().wait()
"""


def test_every_acknowledged_alert_survives_sigkill_in_a_concurrent_burst(tmp_path):
    """Group commit under 8 concurrent posters: whatever was acknowledged is in the journal
    after a SIGKILL at an arbitrary moment (nothing is acknowledged before its commit)."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    repo = str(Path(__file__).resolve().parents[2])
    path = str(tmp_path / "j.db")
    child = subprocess.Popen(
        [sys.executable, "-c", _BURST_CHILD.format(repo=repo, path=path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    acked = []
    try:
        while len(acked) < 400:
            line = child.stdout.readline()
            assert line, f"the child ended early (code {child.poll()})"
            acked.append(line.strip())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    acked += [line.strip() for line in child.stdout.read().splitlines() if line.strip()]

    pending = {job.alert.fingerprint for job in Journal(path).due(now=2.0, limit=10**6)}
    assert set(acked) <= pending


def test_a_failing_write_is_answered_alone_and_the_journal_goes_on(tmp_path):
    import sqlite3

    import pytest

    journal = Journal(tmp_path / "j.db")
    journal.enqueue("stop", [alert("a"), alert("b")], now=1.0)
    job_a, job_b = journal.due(now=1.0)

    with pytest.raises(sqlite3.Error):
        journal.finish(job_a.id, decision="stopped", detail=object(), now=2.0)  # not storable

    journal.finish(job_b.id, decision="stopped", detail="", now=2.0)
    assert journal.enqueue("stop", [alert("c")], now=3.0) == [True]
    assert [r["state"] for r in journal.decisions()] == ["pending", "done", "pending"]
    journal.close()
    with pytest.raises(sqlite3.Error):
        journal.enqueue("stop", [alert("d")], now=4.0)  # closed: the webhook answers 503
