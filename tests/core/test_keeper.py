"""`ds01 up` keeps its parts running: an exit is logged and restarted with backoff."""

from __future__ import annotations

import sys

import pytest

from ds01.keeper import Backoff, Keeper, restart_delay
from ds01.stack import ChildProcess
from tests.harness.waiting import eventually


@pytest.mark.parametrize(("exits", "delay"), [(1, 1.0), (2, 2.0), (3, 4.0), (6, 30.0), (99, 30.0)])
def test_the_delay_doubles_up_to_the_maximum(exits, delay):
    assert restart_delay(exits_in_a_row=exits, backoff=Backoff(1.0, 30.0, 60.0)) == delay


def _child(tmp_path, name: str, code: str) -> ChildProcess:
    return ChildProcess(name, [sys.executable, "-c", code], tmp_path / f"{name}.log").start()


def test_a_part_that_exits_is_started_again_and_the_others_are_left_alone(tmp_path, caplog):
    stays = _child(tmp_path, "stays", "import time; time.sleep(60)")
    dies = _child(tmp_path, "dies", "import sys; print('ran', flush=True); sys.exit(3)")
    keeper = Keeper([stays, dies], backoff=Backoff(initial=0.1, maximum=0.4, stable_after=60))
    first_pid, stays_pid = dies.pid, stays.pid
    try:
        with caplog.at_level("INFO", logger="ds01.keeper"):
            eventually(lambda: (keeper.check(), keeper.restarts >= 3)[1], 30, "three restarts")
        assert stays.running() and stays.pid == stays_pid  # never touched
        assert dies.pid != first_pid
        assert (tmp_path / "dies.log").read_text().count("ran") >= 3  # one log, appended
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert warnings[0].startswith("dies exited (code 3)")
        assert "restarting in 0.1s (exit 1 in a row)" in warnings[0]
        assert "restarting in 0.2s (exit 2 in a row)" in warnings[1]
    finally:
        stays.stop(timeout=2)
        dies.stop(timeout=2)
