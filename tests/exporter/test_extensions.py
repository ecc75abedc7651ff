"""The exporter's reading of the allocator's extension totals file."""

from __future__ import annotations

import json
import os

from allocator.extensions import Extension, write_totals
from exporter.extensions import ExtensionTotals, GrantedExtension
from exporter.health import ErrorCounters

CID = "c" * 64


def test_reads_what_the_allocator_writes_and_follows_changes(tmp_path):
    path = tmp_path / "extensions.json"
    errors = ErrorCounters()
    reader = ExtensionTotals(path, errors)
    assert reader.current() == {}  # no file yet: none granted, not an error
    write_totals(path, [Extension(CID, "job", "a1", "alice", "runtime", 3600.0, 1.0)])
    assert reader.current() == {CID: GrantedExtension(runtime=3600.0, idle=0.0)}
    write_totals(
        path,
        [
            Extension(CID, "job", "a1", "alice", "runtime", 3600.0, 1.0),
            Extension(CID, "job", "a1", "alice", "idle", 600.0, 2.0),
        ],
    )
    os.utime(path, ns=(1, 10**18))  # a different mtime even on a coarse clock
    assert reader.current() == {CID: GrantedExtension(runtime=3600.0, idle=600.0)}
    assert errors.values()["extensions"] == 0


def test_a_broken_file_is_counted_and_the_last_good_reading_kept(tmp_path):
    path = tmp_path / "extensions.json"
    errors = ErrorCounters()
    reader = ExtensionTotals(path, errors)
    path.write_text(json.dumps({"containers": {CID: {"runtime": 60}}}))
    assert reader.current()[CID].runtime == 60.0
    for broken in ("{not json", json.dumps({"containers": {CID: {"runtime": -5}}}), "[]"):
        path.write_text(broken)
        os.utime(path, ns=(1, 10**18 + len(broken)))
        assert reader.current() == {CID: GrantedExtension(runtime=60.0)}
    assert errors.values()["extensions"] == 3
