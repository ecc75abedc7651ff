"""Watching what a started command left running and what it wrote to its log."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains `text` (e.g. a state folder: nothing may outlive it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def wait_for_log(path: Path, text: str, proc: subprocess.Popen, bound: float = 60.0) -> str:
    """The log once `text` shows in it, while `proc` runs (a hang bound, not a speed
    expectation)."""
    deadline = time.monotonic() + bound
    while not (path.exists() and text in path.read_text()):
        log = path.read_text() if path.exists() else ""
        assert proc.poll() is None, log
        assert time.monotonic() < deadline, f"{text!r} not in {path}:\n{log[-4000:]}"
        time.sleep(0.2)
    return path.read_text()


def stop_stack(proc: subprocess.Popen, state: Path) -> None:
    """Teardown of a `ds01 up` a test started, whatever the test left: Ctrl-C first (its parts
    run in sessions of their own, so a SIGKILL of `ds01 up` alone would leave them and their
    dockerds running), then SIGKILL for anything still holding the state folder."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for pid in processes_mentioning(str(state)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
