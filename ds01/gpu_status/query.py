"""Prometheus HTTP API client for gpu-status: instant queries, and one clear line when it fails."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import requests

logger = logging.getLogger(__name__)

# Every series gpu-status reads, fetched in one query so that the whole view is one instant.
SERIES_QUERY = (
    '{__name__=~"ds01_gpu_device_.+|ds01_container_.+|ds01_allocation_device'
    '|ds01_allocator_queue_length|ds01:devices_free:count|ds01:devices_allocated:count"}'
)
# The last collection stays visible for a while after the exporter stops being scraped.
LAST_COLLECT_QUERY = "max_over_time(ds01_exporter_last_collect_timestamp_seconds[15m])"


class PrometheusError(RuntimeError):
    """Prometheus could not be queried; `str()` is the one line to show, naming URL and cause."""

    def __init__(self, url: str, cause: str) -> None:
        self.url, self.cause = url, cause
        super().__init__(f"cannot query Prometheus at {url}: {cause}")


@dataclass(frozen=True)
class Sample:
    """One series of an instant-vector result."""

    labels: Mapping[str, str]
    value: float
    timestamp: float

    @property
    def name(self) -> str:
        return self.labels.get("__name__", "")


@dataclass(frozen=True)
class RawStatus:
    """What Prometheus answered for one refresh; the input of the pure view builder."""

    series: tuple[Sample, ...]
    last_collect: tuple[Sample, ...] = ()
    evaluated_at: float = 0.0
    by_name: Mapping[str, tuple[Sample, ...]] = field(default_factory=dict)

    def named(self, name: str) -> tuple[Sample, ...]:
        return self.by_name.get(name, ())


def raw_status(
    series: tuple[Sample, ...], last_collect: tuple[Sample, ...], evaluated_at: float
) -> RawStatus:
    by_name: dict[str, list[Sample]] = {}
    for sample in series:
        by_name.setdefault(sample.name, []).append(sample)
    return RawStatus(series, last_collect, evaluated_at, {k: tuple(v) for k, v in by_name.items()})


def _value(text: str) -> float:
    # Prometheus writes +Inf, -Inf and NaN as strings; float() reads all three.
    return float(text)


def _root_cause(exc: BaseException) -> str:
    """The innermost OS-level reason (`Connection refused`), not urllib3's nested repr."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror and current.errno is not None:
            return current.strerror
        for nxt in (
            getattr(current, "reason", None),
            current.__cause__,
            current.__context__,
            *current.args,
        ):
            if isinstance(nxt, BaseException):
                stack.append(nxt)
    text = str(exc)
    if "Name or service not known" in text or "nodename nor servname" in text:
        return "host name not found"
    return type(exc).__name__


class PrometheusClient:
    """Instant queries against one Prometheus; every failure becomes a PrometheusError."""

    def __init__(
        self, url: str, *, timeout: float = 5.0, session: requests.Session | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()

    def query(self, expr: str, *, at: float | None = None) -> tuple[Sample, ...]:
        """The samples of an instant-vector query evaluated at `at` (Prometheus' now if None)."""
        if not self.url.startswith(("http://", "https://")):
            raise PrometheusError(self.url, "not an http:// or https:// URL")
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        try:
            response = self.session.get(
                f"{self.url}/api/v1/query", params=params, timeout=self.timeout
            )
        except requests.Timeout:
            raise PrometheusError(self.url, f"no answer within {self.timeout:g}s") from None
        except requests.RequestException as exc:
            raise PrometheusError(self.url, _root_cause(exc)) from None
        return self._parse(response, expr)

    def _parse(self, response: requests.Response, expr: str) -> tuple[Sample, ...]:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or "status" not in body:
            if response.status_code != 200:
                raise PrometheusError(
                    self.url, f"HTTP {response.status_code} {response.reason or ''}".strip()
                )
            raise PrometheusError(self.url, "the answer is not Prometheus API JSON (wrong URL?)")
        if body.get("status") != "success":
            error = body.get("error") or "no error text"
            raise PrometheusError(
                self.url,
                f"HTTP {response.status_code}, {body.get('errorType', 'error')}: {error} "
                f"(query {expr})",
            )
        data = body.get("data") or {}
        if data.get("resultType") != "vector":
            raise PrometheusError(
                self.url, f"expected an instant vector for {expr}, got {data.get('resultType')}"
            )
        samples = []
        try:
            for item in data.get("result", []):
                ts, text = item["value"]
                samples.append(Sample(dict(item.get("metric", {})), _value(text), float(ts)))
        except (KeyError, TypeError, ValueError) as exc:
            raise PrometheusError(self.url, f"malformed result for {expr}: {exc!r}") from None
        return tuple(samples)

    def fetch_status(self, *, at: float) -> RawStatus:
        """The two queries of one refresh, both evaluated at `at`."""
        series = self.query(SERIES_QUERY, at=at)
        last_collect = self.query(LAST_COLLECT_QUERY, at=at)
        logger.debug("fetched %d series from %s", len(series), self.url)
        return raw_status(series, last_collect, at)
