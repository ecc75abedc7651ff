"""Live facts at action time: the container from Docker, its deadlines from Prometheus.

The only I/O of re-verification. An unreachable dependency raises `Unavailable` (a retry can
help: the worker backs off and the webhook answers 503); anything else is a real answer.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import docker
import requests

from ds01.containers import ContainerFacts, classify
from ds01.dockerio import connect
from ds01.gpu import GpuDevice

from .verify import Deadlines

logger = logging.getLogger(__name__)

IDLE_SERIES = "ds01_container_idle_deadline_timestamp_seconds"
RUNTIME_SERIES = "ds01_container_runtime_deadline_timestamp_seconds"
DEVICE_SERIES = "ds01_container_gpu_device"
COLLECT_SERIES = "ds01_exporter_last_collect_timestamp_seconds"
UNMANAGED_JOIN = (
    '{device} unless on(container_id, device_uuid) ds01_allocation_device{{state="bound"}}'
)


class Unavailable(RuntimeError):
    """Docker or Prometheus cannot be reached now; the action is retried later."""

    def __init__(self, dependency: str, detail: str) -> None:
        self.dependency = dependency
        super().__init__(f"{dependency} unreachable: {detail}")


class DockerSource:
    """A Docker client made on first use and re-made after a failure to connect."""

    def __init__(
        self,
        docker_host: str | None,
        *,
        inventory: Iterable[GpuDevice] = (),
        timeout: float = 30.0,
        connector: Callable[..., docker.DockerClient] = connect,
        give_way: Callable[[], None] = lambda: None,
    ) -> None:
        self.docker_host = docker_host
        self._give_way = give_way
        self.inventory = tuple(inventory)
        self._timeout = timeout
        self._connector = connector
        self._client: docker.DockerClient | None = None
        self._default_runtime: str | None = None
        self._lock = threading.Lock()

    def client(self) -> docker.DockerClient:
        with self._lock:
            if self._client is None:
                try:
                    self._client = self._connector(self.docker_host, timeout=self._timeout)
                except docker.errors.DockerException as exc:
                    raise Unavailable("docker", str(exc)) from None
            return self._client

    def call(self, what: str, fn: Callable[[docker.DockerClient], Any]) -> Any:
        """Run one Docker API call (after `give_way`: the enforcer lets a webhook burst be
        acknowledged first); connection trouble becomes `Unavailable`."""
        client = self.client()
        self._give_way()
        try:
            return fn(client)
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise Unavailable("docker", f"{what}: {exc.__class__.__name__}") from None

    def ping(self, timeout: float = 2.0) -> bool:
        """A cheap reachability check with a short timeout (for the webhook's 503)."""
        try:
            api = self.client().api
            return api.get(f"{api.base_url}/_ping", timeout=timeout).status_code == 200
        except (Unavailable, requests.exceptions.RequestException):
            return False

    def container(self, container_id: str) -> ContainerFacts | None:
        """Current facts, or None when Docker no longer knows the container."""
        try:
            inspect = self.call("inspect", lambda c: c.api.inspect_container(container_id))
        except docker.errors.NotFound:
            return None
        return classify(inspect, self.inventory, default_runtime=self.default_runtime())

    def default_runtime(self) -> str:
        """dockerd's DefaultRuntime (asked once): decides what NVIDIA_VISIBLE_DEVICES means."""
        if self._default_runtime is None:
            info = self.call("info", lambda c: c.info())
            self._default_runtime = str(info.get("DefaultRuntime") or "runc")
        return self._default_runtime


def _loopback(url: str) -> bool:
    """True for a URL on this host (localhost, 127.0.0.0/8, ::1)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class PrometheusSource:
    """Instant queries for the contract series of one container."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        session: requests.Session | None = None,
        give_way: Callable[[], None] = lambda: None,
    ) -> None:
        self.url = url.rstrip("/")
        self._timeout = timeout
        self._give_way = give_way
        if session is None:
            session = requests.Session()
            # On this host no proxy is right (a global HTTP_PROXY would swallow every query),
            # and reading the proxy variables and ~/.netrc costs CPU on each call; a remote
            # Prometheus keeps the environment's proxy settings.
            session.trust_env = not _loopback(self.url)
        self._session = session

    def query(self, promql: str) -> list[dict[str, Any]]:
        """One instant query, after `give_way` (as for Docker calls)."""
        self._give_way()
        try:
            reply = self._session.get(
                f"{self.url}/api/v1/query", params={"query": promql}, timeout=self._timeout
            )
        except requests.exceptions.RequestException as exc:
            raise Unavailable("prometheus", exc.__class__.__name__) from None
        if reply.status_code >= 500 or reply.status_code == 429:
            raise Unavailable("prometheus", f"HTTP {reply.status_code}")
        body = reply.json()
        if reply.status_code != 200 or body.get("status") != "success":
            raise RuntimeError(f"prometheus rejected {promql!r}: {body.get('error', reply.text)}")
        return body["data"]["result"]

    def ready(self, timeout: float = 2.0) -> bool:
        try:
            return self._session.get(f"{self.url}/-/ready", timeout=timeout).status_code == 200
        except requests.exceptions.RequestException:
            return False

    def _value(self, metric: str, container_id: str) -> float | None:
        return self._max(self.query(f'{metric}{{container_id="{container_id}"}}'))

    @staticmethod
    def _max(series: list[dict[str, Any]]) -> float | None:
        values = [float(s["value"][1]) for s in series]
        return max(values) if values else None  # several sources: the later deadline wins

    def _idle_measured_at(self, container_id: str) -> float | None:
        """When the exporter last collected the facts behind this container's idle deadline:
        its last-collect time, else (no such series) the sample's scrape time."""
        selector = f'{IDLE_SERIES}{{container_id="{container_id}"}}'
        collected = self._max(self.query(f"{COLLECT_SERIES} and on(instance) {selector}"))
        if collected is not None:
            return collected
        return self._max(self.query(f"timestamp({selector})"))

    def deadlines(self, container_id: str, *, reason: str) -> Deadlines:
        """The deadline the alert's reason depends on (the join for unmanaged)."""
        if reason == "idle":
            idle = self._value(IDLE_SERIES, container_id)
            if idle is None:
                return Deadlines()
            return Deadlines(idle=idle, idle_measured_at=self._idle_measured_at(container_id))
        if reason == "max_runtime":
            return Deadlines(runtime=self._value(RUNTIME_SERIES, container_id))
        device = f'{DEVICE_SERIES}{{container_id="{container_id}"}}'
        if not self.query(device):
            return Deadlines(unmanaged=None)
        return Deadlines(unmanaged=bool(self.query(UNMANAGED_JOIN.format(device=device))))


class Health:
    """Cached reachability of Docker and Prometheus, so a webhook burst pings each only once
    and no acknowledgement waits for a ping (a stale answer is refreshed in the background)."""

    def __init__(
        self,
        docker_source: DockerSource,
        prometheus: PrometheusSource,
        *,
        ttl: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._checks = {"docker": docker_source.ping, "prometheus": prometheus.ready}
        self._ttl = ttl
        self._monotonic = monotonic
        self._cache: dict[str, tuple[float, bool]] = {}
        self._checking: set[str] = set()  # dependencies a caller is re-checking right now
        self._lock = threading.Lock()

    def ok(self, dependency: str) -> bool:
        """Reachable? The last answer; once it is older than the ttl it is re-checked in the
        background, so no ack waits on a ping. Only the first check, and the first after a worker
        saw a failure (mark_down), are made by the caller."""
        with self._lock:
            cached = self._cache.get(dependency)
            if cached is not None:
                stale = self._monotonic() - cached[0] >= self._ttl
                if stale and dependency not in self._checking:
                    self._checking.add(dependency)
                    threading.Thread(
                        target=self._check, args=(dependency,), name=f"health-{dependency}",
                        daemon=True,
                    ).start()  # fmt: skip
                return cached[1]
            self._checking.add(dependency)
        return self._check(dependency)

    def _check(self, dependency: str) -> bool:
        up = False
        try:
            up = self._checks[dependency]()
        except Exception:  # a probe that raises is a dependency we cannot reach
            logger.exception("checking %s failed", dependency)
        finally:
            with self._lock:
                self._cache[dependency] = (self._monotonic(), up)
                self._checking.discard(dependency)
        if not up:
            logger.warning("%s is unreachable", dependency)
        return up

    def mark_down(self, dependency: str) -> None:
        """The worker saw a failure: the next webhook re-checks instead of trusting the cache."""
        with self._lock:
            self._cache.pop(dependency, None)
