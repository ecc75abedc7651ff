"""The worker: takes due jobs from the journal, re-verifies, acts, records — and survives.

Several threads may run, but never two jobs for the same container at once (a repeat for the
same container then sees the first one's effect and skips). Any error in one job — Docker or
Prometheus unreachable, a full disk under the audit log or the journal, a bug — puts that job
back with exponential backoff and is counted; the threads never die of it. A stopped
container is watched (every `watch_interval`) while the exporter still reports it, so a quick
`docker start` past its runtime or still unmanaged is stopped again within one evaluation plus
the grace (a start after an idle stop is busy time: that watch just ends).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, replace

from ds01.clock import SYSTEM_CLOCK, Clock
from ds01.containers import ContainerFacts
from ds01.policy import Policy

from .audit import AuditLog
from .executor import Executor, Outcome
from .facts import DockerSource, Health, PrometheusSource, Unavailable
from .intake import Intake
from .journal import Job, Journal
from .metrics import EnforcerMetrics
from .verify import (
    Decision,
    check_container,
    check_deadline,
    check_warned,
    decide_notify,
    decide_remove,
    decide_watch,
)
from .warned import WarningBook

logger = logging.getLogger(__name__)

STATS_INTERVAL = 0.25  # seconds between queue-gauge refreshes while jobs keep coming
CHECKPOINT_INTERVAL = 2.0  # seconds between journal checkpoints while jobs keep coming


class _Deferred(Exception):
    """A stop that must wait (its warning was given too recently): the job stays pending."""

    def __init__(self, container: ContainerFacts, why: str, not_before: float) -> None:
        super().__init__(why)
        self.container, self.why, self.not_before = container, why, not_before


@dataclass(frozen=True)
class WorkerSettings:
    threads: int = 4
    action_delay: float = 0.0  # testing/ops knob: wait this long before acting on a job
    retry_initial: float = 1.0
    retry_max: float = 30.0
    poll_interval: float = 1.0
    retention: float = 7 * 86400.0
    intake_hold: float = 0.5  # longest a job waits for a webhook burst to be acknowledged
    watch_interval: float = 15.0  # look at a stopped container again (one rule evaluation)
    watch_limit: float = 3600.0  # stop watching after this long (Alertmanager repeats remain)
    stuck_after: float = 600.0  # a job in flight longer than this makes /healthz unhealthy


@dataclass(frozen=True)
class WorkerHealth:
    ok: bool
    detail: str


class Worker:
    def __init__(
        self,
        *,
        journal: Journal,
        docker_source: DockerSource,
        prometheus: PrometheusSource,
        executor: Executor,
        policy: Policy,
        audit: AuditLog,
        metrics: EnforcerMetrics,
        health: Health | None = None,
        intake: Intake | None = None,
        settings: WorkerSettings = WorkerSettings(),
        clock: Clock = SYSTEM_CLOCK,
        warnings: WarningBook | None = None,
    ) -> None:
        self.journal, self.docker, self.prometheus = journal, docker_source, prometheus
        self.warnings = warnings if warnings is not None else WarningBook()
        self.executor, self.policy, self.audit, self.metrics = executor, policy, audit, metrics
        self.health, self.settings, self._clock = health, settings, clock
        self.intake = intake or Intake()
        self._cond = threading.Condition()
        self._wakes = 0
        self._busy_jobs: set[int] = set()
        self._busy_containers: set[str] = set()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_prune = 0.0
        self._last_stats = float("-inf")
        self._last_checkpoint = time.monotonic()
        self._in_flight: dict[str, tuple[int, float]] = {}  # thread -> (job id, monotonic start)
        self._decided: dict[int, tuple[ContainerFacts | None, Outcome]] = {}
        self._audited: set[int] = set()
        self._not_before: dict[int, tuple[int, float]] = {}  # job id -> (failures, due time)

    # --- loop -----------------------------------------------------------------------------

    def wake(self) -> None:
        """New work was journaled: end the idle wait now."""
        with self._cond:
            self._wakes += 1
            self._cond.notify_all()

    def start(self) -> None:
        self.publish_stats()
        for n in range(self.settings.threads):
            thread = threading.Thread(target=self._loop, name=f"enforcer-worker-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        """Ends waits and delays; a job in flight finishes first."""
        self._stopping.set()
        self.wake()
        for thread in self._threads:
            thread.join(timeout)

    def _loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                self._pass()
                failures = 0
            except sqlite3.Error as exc:  # the journal failed (disk full, locked): keep going
                failures += 1
                self.metrics.dependency_errors.labels("journal").inc()
                delay = self._backoff(failures - 1)
                logger.error("journal failed: %s; jobs stay pending, retry in %.1fs", exc, delay)
                self._stopping.wait(delay)
            except Exception:  # anything else: the thread must not die of it either
                failures += 1
                self.metrics.job_errors.labels("loop").inc()
                logger.exception("worker loop error (%d in a row); backing off", failures)
                self._stopping.wait(self._backoff(failures - 1))

    def _backoff(self, failures: int) -> float:
        return min(self.settings.retry_max, self.settings.retry_initial * 2 ** min(failures, 30))

    def _pass(self) -> None:
        """Claim one due job and process it, or checkpoint and wait for work."""
        with self._cond:
            seen = self._wakes
        job = self._claim()
        if job is None:
            self.journal.checkpoint()
            self.publish_stats()
            with self._cond:
                if self._wakes == seen and not self._stopping.is_set():
                    self._cond.wait(self._idle_wait())
            return
        name = threading.current_thread().name
        self._in_flight[name] = (job.id, time.monotonic())
        try:
            if self.settings.action_delay and self._stopping.wait(self.settings.action_delay):
                return  # stopping: the job stays pending in the journal
            self.process(job)
        finally:
            self._in_flight.pop(name, None)
            self._release(job)
        self._maybe_checkpoint()
        self._maybe_prune()

    def _idle_wait(self) -> float:
        """Until the next due job or held-back retry (a busy container's release wakes us)."""
        now = self._clock.time()
        waits = [self.settings.poll_interval]
        due = self.journal.next_due_at()
        if due is not None and due > now:
            waits.append(due - now)
        waits.extend(t - now for _, t in list(self._not_before.values()) if t > now)
        return max(0.01, min(waits))

    def _claim(self) -> Job | None:
        """One due job, reserved for this thread: one row read and parsed, not a page of them."""
        with self._cond:
            now = self._clock.time()
            held = {i for i, (_, due) in self._not_before.items() if due > now}  # backing off
            job = self.journal.next_job(
                now,
                busy_jobs=self._busy_jobs | held,
                busy_containers=self._busy_containers,
            )
            if job is not None:
                self._busy_jobs.add(job.id)
                self._busy_containers.add(job.alert.container_id)
            return job

    def liveness(self) -> WorkerHealth:
        """Unhealthy when a worker thread died or one job has been in flight too long."""
        if not self._threads:
            return WorkerHealth(False, "workers not started")
        dead = [t.name for t in self._threads if not t.is_alive()]
        if dead and not self._stopping.is_set():
            return WorkerHealth(False, f"worker threads dead: {', '.join(dead)}")
        now = time.monotonic()
        for name, (job_id, since) in list(self._in_flight.items()):
            if now - since > self.settings.stuck_after:
                return WorkerHealth(False, f"{name} stuck on job {job_id} for {now - since:.0f}s")
        return WorkerHealth(True, f"{len(self._threads)} workers")

    def _release(self, job: Job) -> None:
        with self._cond:
            self._busy_jobs.discard(job.id)
            self._busy_containers.discard(job.alert.container_id)
            self._cond.notify_all()

    def _maybe_checkpoint(self) -> None:
        """While busy, fold the write-ahead log back every CHECKPOINT_INTERVAL seconds."""
        now = time.monotonic()
        with self._cond:
            if now - self._last_checkpoint < CHECKPOINT_INTERVAL:
                return
            self._last_checkpoint = now
        self.intake.wait_quiet(self.settings.intake_hold)  # never in the middle of a burst
        self.journal.checkpoint()

    def _maybe_prune(self) -> None:
        now = self._clock.time()
        if now - self._last_prune < 3600:
            return
        self._last_prune = now
        removed = self.journal.prune(finished_before=now - self.settings.retention)
        self.warnings.forget_before(now - self.settings.retention)
        if removed:
            logger.info("journal pruned rows=%d", removed)

    def publish_stats(self, *, at_most_every: float = 0.0) -> None:
        """Refresh the queue gauges (throttled while busy; always when a worker goes idle)."""
        now = time.monotonic()
        with self._cond:
            if now - self._last_stats < at_most_every:
                return
            self._last_stats = now
        self.metrics.queue.publish(self.journal.stats())

    # --- one job ----------------------------------------------------------------------------

    def process(self, job: Job) -> None:
        """Decide, act and record one job; any error puts it back with backoff, counted.

        What is done stays done on a retry: an action taken is not taken again when only its
        audit record or its journal update failed (full disk), and a record is written once.
        """
        now = self._clock.time()
        stage = "decide"
        try:
            if job.id not in self._decided:
                if job.state == "watching" and self._watch(job):
                    self._forget(job.id)
                    return
                self._decided[job.id] = self._decide_and_act(job)
            container, outcome = self._decided[job.id]
            if job.id not in self._audited:
                stage = "record"
                self._audit(job, container, outcome, started=now)
                self._audited.add(job.id)
            stage = "journal"
            self._close(job, container, outcome)
            self._forget(job.id)
        except _Deferred as deferred:
            try:
                self._defer(job, deferred)
                self._forget(job.id)
            except Exception as exc:  # a full disk under the audit log: try again later
                logger.exception("job %d (%s): deferral not recorded", job.id, job.kind)
                self._retry(job, exc, stage="record")
        except Unavailable as exc:
            self.metrics.dependency_errors.labels(exc.dependency).inc()
            if self.health is not None:
                self.health.mark_down(exc.dependency)
            self._retry(job, exc, stage="dependency")
        except Exception as exc:  # one bad job must not stop the others
            logger.exception("job %d (%s) failed at %s", job.id, job.kind, stage)
            self._retry(job, exc, stage=stage)

    def _forget(self, job_id: int) -> None:
        self._decided.pop(job_id, None)
        self._audited.discard(job_id)
        self._not_before.pop(job_id, None)

    def _retry(self, job: Job, exc: Exception, *, stage: str) -> None:
        """Back off this job; the in-memory hold works even when the journal cannot be written."""
        if stage != "dependency":
            self.metrics.job_errors.labels(stage).inc()
        if isinstance(exc, sqlite3.Error):  # locked or full: the journal is a dependency too
            self.metrics.dependency_errors.labels("journal").inc()
        failures = max(job.attempts, self._not_before.get(job.id, (0, 0.0))[0]) + 1
        delay = self._backoff(failures - 1)
        due = self._clock.time() + delay
        self._not_before[job.id] = (failures, due)
        try:
            self.journal.retry_later(job.id, error=f"{stage}: {exc}", due_at=due)
            self.publish_stats()
        except Exception:  # the in-memory hold above still backs it off; counted, logged
            self.metrics.job_errors.labels("journal").inc()
            logger.warning("job %d: could not journal the retry (%s)", job.id, stage, exc_info=True)
        logger.warning(
            "job %d %s container_id=%s: %s; retry in %.1fs (attempt %d)",
            job.id, job.kind, job.alert.container_id[:12], exc, delay, failures,
        )  # fmt: skip

    def _watch(self, job: Job) -> bool:
        """A watched stop: True when handled here (keep or end); False: verify it as new."""
        container = self.docker.container(job.alert.container_id)
        reported = True
        if container is not None and not container.running:
            deadlines = self.prometheus.deadlines(job.alert.container_id, reason=job.alert.reason)
            reported = any(v is not None for v in (deadlines.idle, deadlines.runtime))
            reported = reported or deadlines.unmanaged is not None
        now = self._clock.time()
        watch = decide_watch(
            reason=job.alert.reason,
            container=container,
            still_reported=reported,
            watched_for=now - (job.watch_started or now),
            limit=self.settings.watch_limit,
        )
        if watch.verdict == "keep":
            self.journal.reschedule(job.id, due_at=now + self.settings.watch_interval)
            return True
        if watch.verdict == "end":
            logger.debug("watch ended container_id=%s: %s", job.alert.container_id, watch.why)
            self.journal.end_watch(job.id, note=watch.why, now=now)
            return True
        logger.info("container_id=%s %s; verifying again", job.alert.container_id, watch.why)
        return False

    def _decide_and_act(self, job: Job) -> tuple[ContainerFacts | None, Outcome]:
        alert, now = job.alert, self._clock.time()
        container = self.docker.container(alert.container_id)
        if job.kind == "remove":
            decision = decide_remove(
                container=container, stopped_at=job.received_at, policy=self.policy
            )
            if not decision.act or container is None:
                return container, Outcome("skipped", decision.label, decision.why)
            return container, self._with_why(decision.why, self.executor.remove(container))
        if job.kind == "notify":
            decision = decide_notify(alert=alert, container=container, policy=self.policy, now=now)
            if not decision.act or container is None:
                return container, Outcome("skipped", decision.label, decision.why)
            outcome = self.executor.notify(container, alert)
            if alert.reason == "idle":  # given, even where the notice file could not be written
                self.warnings.record(alert.container_id, "idle", self._clock.time())
            return container, outcome
        decision = check_container(alert=alert, container=container, policy=self.policy, now=now)
        deadline = None
        if decision.act:
            deadlines = self.prometheus.deadlines(alert.container_id, reason=alert.reason)
            decision = check_deadline(
                alert=alert,
                deadlines=deadlines,
                policy=self.policy,
                now=self._clock.time(),
                container=container,
            )
            deadline = {"idle": deadlines.idle, "max_runtime": deadlines.runtime}.get(alert.reason)
            if decision.act and alert.reason == "idle" and container is not None:
                assert deadlines.idle is not None  # check_deadline acted on it
                decision = self._warned_first(container, job, deadlines.idle, decision)
        if not decision.act or container is None:
            return container, Outcome("skipped", decision.label, decision.why)
        stopped = self.executor.stop(container, alert, deadline=deadline)
        return container, self._with_why(decision.why, stopped)

    def _warned_first(
        self, container: ContainerFacts, job: Job, deadline: float, passed: Decision
    ) -> Decision:
        """No idle stop without a warning at least `idle_warning` before it (raises _Deferred)."""
        now = self._clock.time()
        limits = self.policy.limits_for(container.user, container.type, self._clock.now())
        gate = check_warned(
            warned_at=self.warnings.last(container.container_id, "idle"),
            idle_since=deadline - limits.idle_timeout,
            idle_warning=self.policy.idle_warning,
            now=now,
        )
        if gate.decision.act:
            return Decision(True, f"{passed.why}; {gate.decision.why}")
        assert gate.not_before is not None
        warned = ""
        if gate.warn_now:
            outcome = self.executor.warn_before_stop(container, job.alert, gate.not_before)
            self.warnings.record(container.container_id, "idle", now)
            warned = f"; warning {outcome.decision} ({outcome.detail})"
        raise _Deferred(container, f"deferred: {gate.decision.why}{warned}", gate.not_before)

    def _defer(self, job: Job, deferred: _Deferred) -> None:
        """Audit why the stop waits, and keep the job pending until its time comes."""
        alert, container = job.alert, deferred.container
        self.audit.write(
            event=job.kind,
            container_id=alert.container_id,
            container=container.name,
            user=container.user,
            reason=alert.reason,
            fingerprint=alert.fingerprint,
            decision=deferred.why,
            detail=f"stop not before {deferred.not_before:.3f}",
            starts_at=alert.starts_at,
        )
        self.metrics.actions.labels(job.kind, "deferred").inc()
        logger.info(
            "stop container=%s user=%s reason=%s %s",
            container.name, container.user, alert.reason, deferred.why,
        )  # fmt: skip
        self.journal.retry_later(job.id, error=deferred.why, due_at=deferred.not_before)
        self.publish_stats()

    @staticmethod
    def _with_why(why: str, outcome: Outcome) -> Outcome:
        return replace(outcome, detail=f"{why}; {outcome.detail}")

    def _audit(
        self, job: Job, container: ContainerFacts | None, outcome: Outcome, *, started: float
    ) -> None:
        alert = job.alert
        name = container.name if container else alert.container
        user = container.user if container else alert.user
        self.audit.write(
            event=job.kind,
            container_id=alert.container_id,
            container=name,
            user=user,
            reason=alert.reason,
            fingerprint=alert.fingerprint,
            decision=outcome.decision,
            detail=outcome.detail,
            starts_at=alert.starts_at,
            **outcome.extra,
        )
        self.metrics.actions.labels(job.kind, outcome.result).inc()
        if job.kind != "remove":
            self.metrics.latency.observe(max(0.0, self._clock.time() - job.received_at))
        log = logger.debug if outcome.result == "skipped" else logger.info
        log(
            "%s container=%s user=%s reason=%s decision=%r detail=%r took=%.3fs",
            job.kind, name, user, alert.reason, outcome.decision, outcome.detail,
            self._clock.time() - started,
        )  # fmt: skip

    def _close(self, job: Job, container: ContainerFacts | None, outcome: Outcome) -> None:
        """Journal the decision; a stop is then watched for a quick restart."""
        now = self._clock.time()
        if outcome.result == "stopped" and container is not None:
            self._schedule_removal(job, container)
        if outcome.result == "stopped" and job.kind == "stop":
            due = now + self.settings.watch_interval
            self.journal.watch(
                job.id, decision=outcome.decision, detail=outcome.detail, now=now, due_at=due
            )
        else:
            self.journal.finish(job.id, decision=outcome.decision, detail=outcome.detail, now=now)
        self.publish_stats(at_most_every=STATS_INTERVAL)

    def _schedule_removal(self, job: Job, container: ContainerFacts) -> None:
        hold = self.policy.container_hold_after_stop
        if container.type != "ds01" or hold is None:
            return
        now = self._clock.time()
        self.journal.enqueue("remove", [job.alert], now=now, due_at=now + hold)
        logger.info("remove container=%s scheduled in %.0fs", container.name, hold)
        self.wake()
