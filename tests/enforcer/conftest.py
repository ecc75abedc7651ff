"""Enforcer fixtures: a real Prometheus scraping a series server, and enforcers on free ports.

`enforcer_factory(...)` runs the real app under waitress in this process (the same wiring
as `ds01 enforcer`); `run_enforcer_cli(...)` starts `python -m ds01.cli enforcer` as a child.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from ds01.policy import Policy, parse_policy
from ds01.stack import Prometheus, free_port, start_prometheus
from enforcer.audit import read_audit
from enforcer.service import Enforcer, EnforcerConfig
from enforcer.worker import WorkerSettings
from tests.enforcer.series import ContainerSeries, SeriesServer, prometheus_config, prometheus_has
from tests.harness.components import require_binary
from tests.harness.disk import SmallDisk, small_disk_at
from tests.harness.waiting import eventually

TOKEN = "s3cret-test-token"
GPU = "MIG-5a0f5a6e-0000-4000-8000-000000000001"
REPO = Path(__file__).resolve().parents[2]
WAIT = 30.0  # an upper bound for waits, never an expectation of speed


def make_policy(**overrides: Any) -> Policy:
    """The default policy, with stop grace 0s (busybox `sleep` ignores SIGTERM) and overrides."""
    return parse_policy({"stop_grace": "0s", "idle_warning": "0s", **overrides}, "<test policy>")


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z"


def alert_for(
    container,
    *,
    reason: str = "idle",
    action: str = "stop",
    status: str = "firing",
    starts_at: float | None = None,
    fingerprint: str | None = None,
    summary: str | None = None,
) -> dict[str, Any]:
    """One Alertmanager v4 alert about a docker-py container."""
    labels = {
        "alertname": "GPUContainerIdle" if action == "stop" else "GPUContainerIdleWarning",
        "severity": "critical" if action == "stop" else "warning",
        "action": action,
        "reason": reason,
        "container_id": container.id,
        "container": container.name,
        "user": "alice",
        "group": "student",
        "type": "docker",
    }
    return {
        "status": status,
        "labels": labels,
        "annotations": {"summary": summary or f"{container.name} has been idle"},
        "startsAt": iso(starts_at if starts_at is not None else time.time()),
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus/graph",
        "fingerprint": fingerprint or uuid.uuid4().hex[:16],
    }


def webhook(*alerts: dict[str, Any], status: str = "firing") -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": '{}:{container_id="x"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "ds01-enforcer",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager",
        "alerts": list(alerts),
    }


@pytest.fixture(scope="session")
def series_server() -> Iterator[SeriesServer]:
    server = SeriesServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def enforcer_prometheus(series_server, tmp_path_factory) -> Iterator[Prometheus]:
    """A real Prometheus scraping the series server every 250 ms (started once per session)."""
    require_binary("prometheus")
    server = start_prometheus(
        tmp_path_factory.mktemp("enforcer-prometheus"), prometheus_config(series_server.target)
    )
    yield server
    server.stop()


@dataclass
class Deadlines:
    """Publish a container's series and wait until Prometheus answers with them."""

    series: SeriesServer
    prometheus: Prometheus

    def publish(self, container, **values: Any) -> None:
        spec = ContainerSeries(container_id=container.id, name=container.name, **values)
        self.series.set(spec)
        wanted = [f'{{container_id="{container.id}"}}']
        if spec.bound:
            wanted.append(f'ds01_allocation_device{{container_id="{container.id}"}}')
        for promql in wanted:
            eventually(
                lambda q=promql: prometheus_has(self.prometheus.url, q),
                WAIT,
                f"Prometheus to scrape {promql}",
            )

    def past_idle(self, container) -> None:
        self.publish(container, idle=time.time() - 120, runtime=time.time() + 86400)


@pytest.fixture
def deadlines(series_server, enforcer_prometheus) -> Deadlines:
    return Deadlines(series_server, enforcer_prometheus)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "enforcer.token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


@dataclass
class RunningEnforcer:
    """An enforcer serving on a free port, with helpers to post and read what it did."""

    url: str
    audit_path: Path
    service: Enforcer | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def post(self, endpoint: str, body: Any, *, token: str | None = TOKEN, **kw: Any):
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        if isinstance(body, bytes | str):
            return requests.post(f"{self.url}/{endpoint}", data=body, headers=headers, timeout=30)
        return requests.post(f"{self.url}/{endpoint}", json=body, headers=headers, timeout=30)

    def audit(self) -> list[dict[str, Any]]:
        return read_audit(self.audit_path)

    def records_for(self, container_id: str, *, deferred: bool = False) -> list[dict[str, Any]]:
        """The container's audit records; a stop deferred to let its warning run is left out
        unless `deferred` (tests with idle_warning 0s see one before each idle stop)."""
        return [
            r
            for r in self.audit()
            if r["container_id"] == container_id
            and (deferred or not r["decision"].startswith("deferred:"))
        ]

    def journaled(self, container_id: str) -> list[dict[str, Any]]:
        """The container's rows in the journal. A webhook journals before it answers, so once
        the reply is in, no row here means nothing will ever be done (no waiting needed)."""
        assert self.service is not None, "only for an in-process enforcer"
        return [d for d in self.service.journal.decisions() if d["container_id"] == container_id]

    def wait_done(self, container_id: str) -> list[dict[str, Any]]:
        """Wait until every journaled job of the container has its decision."""
        return eventually(
            lambda: (
                (rows := self.journaled(container_id))
                and all(r["state"] in ("done", "watching") for r in rows)  # watching: decided
                and rows
            ),
            WAIT,
            f"the jobs of {container_id[:12]} decided",
        )

    def wait_records(self, container_id: str, count: int = 1) -> list[dict[str, Any]]:
        return eventually(
            lambda: len(self.records_for(container_id)) >= count and self.records_for(container_id),
            WAIT,
            f"{count} audit record(s) for {container_id[:12]}",
        )

    def metric(self, name: str, **labels: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        text = requests.get(f"{self.url}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return sample.value
        raise AssertionError(f"no sample {name}{labels}")


@pytest.fixture
def enforcer_factory(
    tmp_path, dockerd, enforcer_prometheus
) -> Iterator[Callable[..., RunningEnforcer]]:
    """Start the real enforcer (app + worker) under waitress in this process."""
    started: list[tuple[Enforcer, Any, threading.Thread]] = []

    def start(
        *,
        policy: Policy | None = None,
        docker_host: str | None = None,
        dry_run: bool = False,
        max_body: int = 4 * 1024 * 1024,
        prometheus_url: str | None = None,
        notice_path: str = "/workspace/.ds01-alerts",
        audit_dir: Path | None = None,
        **worker: Any,
    ) -> RunningEnforcer:
        n = len(started)
        settings = {"retry_initial": 0.1, "retry_max": 0.5, "poll_interval": 0.2, **worker}
        config = EnforcerConfig(
            journal_path=tmp_path / f"enforcer-{n}.db",
            audit_path=(audit_dir or tmp_path) / f"audit-{n}.jsonl",
            prometheus_url=prometheus_url or enforcer_prometheus.url,
            docker_host=docker_host or dockerd.url,
            notice_path=notice_path,
            dry_run=dry_run,
            max_body=max_body,
            health_ttl=0.0,
            worker=WorkerSettings(**settings),
        )
        service = Enforcer(config, policy=policy or make_policy(), token=TOKEN)
        server = service.make_server("127.0.0.1", 0, threads=8)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        service.worker.start()
        started.append((service, server, thread))
        return RunningEnforcer(
            f"http://127.0.0.1:{server.effective_port}", config.audit_path, service
        )

    yield start
    for service, server, thread in started:
        service.stop_server(server)
        thread.join(5)
        server.task_dispatcher.shutdown()
        service.close()


@pytest.fixture
def cli_enforcer(tmp_path, token_file, dockerd, enforcer_prometheus):
    """Factory: `python -m ds01.cli enforcer …` as a child process, answering /healthz; killed
    at teardown. By default every call runs on the same port, policy and state (a restart);
    `policy`, `folder` and `port` give one its own (several enforcers at once)."""
    children: list[subprocess.Popen] = []
    default_port = free_port()

    def start(
        *extra: str,
        policy: dict[str, Any] | None = None,
        folder: Path | None = None,
        port: int | None = None,
    ) -> RunningEnforcer:
        folder = folder or tmp_path
        folder.mkdir(parents=True, exist_ok=True)
        policy_file = folder / "policy.yaml"
        policy_file.write_text(yaml.safe_dump(policy or {"stop_grace": "0s", "idle_warning": "0s"}))
        port = port or default_port
        argv = [
            sys.executable, "-m", "ds01.cli", "enforcer",
            "--policy", str(policy_file),
            "--state-dir", str(folder / "state"),
            "--listen", f"127.0.0.1:{port}",
            "--docker-host", dockerd.url,
            "--token-file", str(token_file),
            "--prometheus-url", enforcer_prometheus.url,
            "--retry-initial", "0.1s", "--retry-max", "0.5s", "--poll-interval", "0.2s",
            *extra,
        ]  # fmt: skip
        log_path = folder / f"enforcer-{len(children)}.log"
        with open(log_path, "ab") as log:
            child = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        children.append(child)
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            if child.poll() is not None:
                pytest.fail(f"enforcer exited {child.returncode}: {log_path.read_text()[-2000:]}")
            try:
                return requests.get(f"{url}/healthz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        eventually(up, WAIT, f"the enforcer at {url} to answer /healthz")
        running = RunningEnforcer(url, folder / "state" / "enforcer-audit.jsonl")
        running.extra["process"] = child
        return running

    yield start
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait(10)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 1 MiB tmpfs (root: `mount -t tmpfs`), unmounted at teardown."""
    with small_disk_at(tmp_path / "small-disk") as disk:
        yield disk


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short folder under /tmp (unix socket paths are length-limited)."""
    path = Path(tempfile.mkdtemp(prefix="ds01e-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
