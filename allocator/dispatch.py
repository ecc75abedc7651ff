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


class LaneDispatcher(ThreadedTaskDispatcher):
    """`runners` threads at most serve lane requests; other requests are served as before."""

    def __init__(
        self, lane_for: Callable[[str, str], bool] = in_decision_lane, runners: int = 1
    ) -> None:
        super().__init__()
        self.lane_for = lane_for
        self.runners = runners
        self.lane: deque[Any] = deque()
        self.lane_running = 0
        self._idle: list[threading.Condition] = []  # a stack: the last idle is woken first
        self._local = threading.local()

    def _in_lane(self, task: Any) -> bool:
        requests = getattr(task, "requests", None)  # a channel: requests[0] is served next
        if not requests:
            return False
        return self.lane_for(requests[0].command, requests[0].path)

    def _wake_one(self) -> None:
        if self._idle:
            self._idle.pop().notify()

    def _work_for_me(self) -> bool:
        return bool(self.queue) or (bool(self.lane) and self.lane_running < self.runners)

    def add_task(self, task: Any) -> None:
        with self.lock:
            if self._in_lane(task):
                self.lane.append(task)
                if self.lane_running < self.runners:
                    self._wake_one()
                return
            self.queue.append(task)
            self._wake_one()
            backlog = len(self.queue) - len(self._idle)
            if backlog > 0:
                self.queue_logger.warning("Task queue depth is %d", backlog)

    def set_thread_count(self, count: int) -> None:
        super().set_thread_count(count)
        with self.lock:
            if self.stop_count:
                while self._idle:
                    self._idle.pop().notify()

    def handler_thread(self, thread_no: int) -> None:
        wake = threading.Condition(self.lock)
        self._local.in_lane = False
        while True:
            with self.lock:
                if self._local.in_lane:  # the slot passes on in the same step: no gap
                    self.lane_running -= 1
                    self._local.in_lane = False
                while not self._work_for_me() and self.stop_count == 0:
                    self.active_count -= 1
                    self._idle.append(wake)
                    wake.wait()
                    self.active_count += 1
                if self.stop_count > 0:
                    self.active_count -= 1
                    self.stop_count -= 1
                    self.threads.discard(thread_no)
                    self.thread_exit_cv.notify()
                    if wake in self._idle:
                        self._idle.remove(wake)
                    break
                if self.queue:
                    task = self.queue.popleft()
                else:
                    task = self.lane.popleft()
                    self.lane_running += 1
                    self._local.in_lane = True
            try:
                task.service()
            except BaseException:
                self.logger.exception("Exception when servicing %r", task)

    def leave_lane(self) -> None:
        """The calling thread gives up its lane slot (it is about to block); a no-op outside."""
        if not getattr(self._local, "in_lane", False):
            return
        with self.lock:
            self.lane_running -= 1
            self._local.in_lane = False
            if self.lane:
                self._wake_one()

    def shutdown(self, cancel_pending: bool = True, timeout: float = 5) -> bool:
        stopped = super().shutdown(cancel_pending, timeout)
        if cancel_pending:
            with self.lock:
                while self.lane:
                    self.lane.popleft().cancel()
        return stopped
