"""The audit log: append-only JSON lines with the same keys, mode 0640."""

from __future__ import annotations

import os

import pytest

from ds01.clock import FrozenClock
from enforcer.audit import AuditLog, read_audit

FIELDS = dict(
    event="stop",
    container_id="c" * 64,
    container="job",
    user="alice",
    reason="idle",
    fingerprint="fp",
    decision="stopped",
    detail="stop grace 60s",
)


def test_records_are_appended_with_every_key(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl", clock=FrozenClock(1_700_000_000.0))
    log.write(**FIELDS)
    log.write(**{**FIELDS, "decision": "skipped: gone"})
    log.close()

    first, second = read_audit(tmp_path / "audit.jsonl")
    assert first == {**FIELDS, "time": "2023-11-14T22:13:20+00:00", "dry_run": False}
    assert second["decision"] == "skipped: gone"


def test_reopening_appends_and_dry_run_is_in_every_record(tmp_path):
    path = tmp_path / "audit.jsonl"
    AuditLog(path).write(**FIELDS)
    AuditLog(path, dry_run=True).write(**FIELDS)

    assert [r["dry_run"] for r in read_audit(path)] == [False, True]


def test_mode_is_0640_whatever_the_umask(tmp_path):
    old = os.umask(0o000)
    try:
        AuditLog(tmp_path / "a.jsonl").write(**FIELDS)
    finally:
        os.umask(old)
    existing = tmp_path / "b.jsonl"
    existing.write_text("")
    existing.chmod(0o666)
    AuditLog(existing).write(**FIELDS)

    assert (tmp_path / "a.jsonl").stat().st_mode & 0o777 == 0o640
    assert existing.stat().st_mode & 0o777 == 0o640


def test_missing_log_reads_as_empty(tmp_path):
    assert read_audit(tmp_path / "none.jsonl") == []


def test_a_full_disk_refuses_a_record_whole_and_the_next_one_reads_back(small_disk):
    """A write the disk takes only part of is cut back: no torn line glues itself to the next
    record (read_audit would fail on it), and every record that was written reads back."""
    path = small_disk.path / "audit.jsonl"
    log = AuditLog(path)
    log.write(**FIELDS)  # the last page is partly used: the fill leaves it be
    small_disk.fill()
    written = 1
    with pytest.raises(OSError):
        for _ in range(100):
            log.write(**{**FIELDS, "detail": "x" * 300})
            written += 1
    small_disk.free()
    log.write(**{**FIELDS, "decision": "after"})
    log.close()
    records = read_audit(path)
    assert len(records) == written + 1 and records[-1]["decision"] == "after"
