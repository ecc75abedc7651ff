"""Waitress's thread pool with a one-runner lane for the allocator's decisions.

Grants and releases serialize on the allocator's decision lock anyway; served on several
threads at once they only trade the GIL back and forth (each SQLite statement lets another
request in, which then blocks on the lock): 0.51x an empty app's throughput against 0.75x
on one thread (bench/allocator_load.py). So decision requests queue here and one runner
takes them in arrival order; everything else (long polls, history, metrics) gets a thread
of its own as before, and a decision that has to wait (a long poll) steps out of the lane
first (`leave_lane`). Idle threads are woken last-idle-first: a warm thread, not a cold one.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from waitress.task import ThreadedTaskDispatcher

LEAVE_LANE_KEY = "ds01.leave_lane"  # WSGI environ: call before blocking in a lane request


def in_decision_lane(method: str, path: str) -> bool:
    """Requests that take the decision lock at once and never wait on purpose (a POST that
    long-polls leaves the lane before it waits)."""
    if method == "POST":
        return path == "/v1/allocations"
    if method == "DELETE":
        return path.startswith(("/v1/allocations/", "/v1/tickets/"))
    return False


class _Sleeper:
    """An idle thread: its own condition, and whether it was woken holding a lane slot."""

    def __init__(self, lock: threading.Lock) -> None:
        self.wake = threading.Condition(lock)
        self.lane_slot = False


class LaneDispatcher(ThreadedTaskDispatcher):
    """`runners` threads at most serve lane requests; other requests are served as before.

    A thread is woken for the lane only when no runner holds the slot, and the slot is taken
    at the wake-up: a second request arriving before that thread runs wakes nobody else (a
    wasted wake-up per request cost more than the lane saved).
    """

    def __init__(
        self, lane_for: Callable[[str, str], bool] = in_decision_lane, runners: int = 1
    ) -> None:
        super().__init__()
        self.lane_for = lane_for
        self.runners = runners
        self.lane: deque[Any] = deque()
        self.lane_running = 0  # slots held, by runners and by threads woken to run
        self._idle: list[_Sleeper] = []  # a stack: the last idle (a warm thread) goes first
        self._local = threading.local()

    def _in_lane(self, task: Any) -> bool:
        requests = getattr(task, "requests", None)  # a channel: requests[0] is served next
        if not requests:
            return False
        return self.lane_for(requests[0].command, requests[0].path)

    def _wake(self, *, lane_slot: bool) -> None:
        """Under the lock. With `lane_slot`, the woken thread owns a slot from now on."""
        if not self._idle:
            return
        sleeper = self._idle.pop()
        if lane_slot:
            sleeper.lane_slot = True
            self.lane_running += 1
        sleeper.wake.notify()

    def _offer_lane(self) -> None:
        if self.lane and self.lane_running < self.runners:
            self._wake(lane_slot=True)

    def add_task(self, task: Any) -> None:
        with self.lock:
            if self._in_lane(task):
                self.lane.append(task)
                self._offer_lane()
                return
            self.queue.append(task)
            self._wake(lane_slot=False)
            backlog = len(self.queue) - len(self._idle)
            if backlog > 0:
                self.queue_logger.warning("Task queue depth is %d", backlog)

    def set_thread_count(self, count: int) -> None:
        super().set_thread_count(count)
        with self.lock:
            if self.stop_count:
                while self._idle:
                    self._wake(lane_slot=False)

    def _next_task(self, me: _Sleeper) -> Any | None:
        """Under the lock: this thread's next task (waiting while there is none); None = stop."""
        while True:
            if me.lane_slot and self.lane:
                return self.lane.popleft()
            if me.lane_slot:  # nothing left for the slot (another runner took it)
                me.lane_slot = False
                self.lane_running -= 1
            if self.stop_count > 0:
                return None
            if self.queue:
                return self.queue.popleft()
            if self.lane and self.lane_running < self.runners:
                me.lane_slot = True
                self.lane_running += 1
                continue
            self.active_count -= 1
            self._idle.append(me)
            me.wake.wait()
            self.active_count += 1

    def handler_thread(self, thread_no: int) -> None:
        me = _Sleeper(self.lock)
        self._local.sleeper = me
        while True:
            with self.lock:
                task = self._next_task(me)
                if task is None:
                    self.active_count -= 1
                    self.stop_count -= 1
                    self.threads.discard(thread_no)
                    self.thread_exit_cv.notify()
                    self._offer_lane()  # a slot this thread gave up goes to another
                    return
            try:
                task.service()
            except BaseException:
                self.logger.exception("Exception when servicing %r", task)

    def leave_lane(self) -> None:
        """The calling thread gives up its lane slot (it is about to block); a no-op outside."""
        me = getattr(self._local, "sleeper", None)
        if me is None or not me.lane_slot:
            return
        with self.lock:
            me.lane_slot = False
            self.lane_running -= 1
            self._offer_lane()

    def shutdown(self, cancel_pending: bool = True, timeout: float = 5) -> bool:
        stopped = super().shutdown(cancel_pending, timeout)
        if cancel_pending:
            with self.lock:
                while self.lane:
                    self.lane.popleft().cancel()
        return stopped
