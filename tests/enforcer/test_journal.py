"""The SQLite journal: one row per (fingerprint, startsAt, kind), kept until decided."""

from __future__ import annotations

from types import MappingProxyType

from enforcer.journal import Journal
from enforcer.payload import Alert


def alert(fingerprint: str = "fp", starts_at: float = 100.0, cid: str = "c" * 64) -> Alert:
    labels = {"container_id": cid, "reason": "idle", "action": "stop"}
    return Alert(
        "firing", fingerprint, starts_at, cid, "idle", "stop", MappingProxyType(labels), {}
    )


def test_repeats_are_journaled_once(tmp_path):
    journal = Journal(tmp_path / "j.db")

    assert journal.enqueue("stop", [alert(), alert()], now=1.0) == [True, False]
    assert journal.enqueue("stop", [alert()], now=2.0) == [False]
    assert journal.enqueue("stop", [alert(starts_at=200.0)], now=2.0) == [True]  # fired again
    assert journal.enqueue("notify", [alert()], now=2.0) == [True]  # another endpoint
    assert journal.stats().depth == 3


def test_pending_jobs_survive_a_restart_and_decided_ones_stay_deduplicated(tmp_path):
    first = Journal(tmp_path / "j.db")
    first.enqueue("stop", [alert("a"), alert("b")], now=10.0)
    [job_a, _] = first.due(now=10.0)
    first.finish(job_a.id, decision="stopped", detail="", now=11.0)
    first.close()

    again = Journal(tmp_path / "j.db")

    [pending] = again.due(now=20.0)
    assert pending.alert.fingerprint == "b"
    assert pending.alert == alert("b")
    assert again.enqueue("stop", [alert("a")], now=21.0) == [False]
    assert again.stats().depth == 1
    assert again.stats().oldest_received_at == 10.0


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
