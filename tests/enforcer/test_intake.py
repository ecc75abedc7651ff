"""Acks first: workers give way while a webhook is being received, but never for long."""

from __future__ import annotations

import threading
import time

from enforcer.intake import Intake


def _returns(call, bound: float = 10.0) -> bool:
    """True when `call()` returns within `bound` seconds (a hang bound, not a speed test)."""
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(bound)
    return not thread.is_alive()


def test_quiet_intake_does_not_hold_workers():
    assert _returns(lambda: Intake().wait_quiet(timeout=60))  # not the 60 s: nothing in flight


def test_workers_wait_for_the_webhook_in_flight():
    intake = Intake()
    released = threading.Event()

    def worker() -> None:
        intake.wait_quiet(timeout=60)
        released.set()

    with intake.receiving():
        thread = threading.Thread(target=worker)
        thread.start()
        assert not released.wait(0.2)
    thread.join(10)
    assert released.is_set()


def test_a_busy_intake_holds_workers_only_until_the_timeout():
    intake = Intake()
    with intake.receiving():  # returns although a webhook is still in flight
        assert _returns(lambda: intake.wait_quiet(timeout=0.05))


def test_workers_wait_for_the_intake_to_settle_after_a_webhook():
    """A burst arrives with gaps between posts: workers resume only after `settle` of quiet."""
    intake = Intake(settle=0.3)
    with intake.receiving():
        pass
    began = time.monotonic()
    intake.wait_quiet(timeout=60)
    assert time.monotonic() - began >= 0.25  # held for the rest of the settle period


def test_a_settled_intake_does_not_hold_workers():
    intake = Intake(settle=0.0)
    with intake.receiving():
        pass
    assert _returns(lambda: intake.wait_quiet(timeout=60))  # the webhook ended: nothing waits
