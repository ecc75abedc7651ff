"""A tiny real HTTP server that serves the contract series for test containers.

Prometheus scrapes it like the exporter, so the enforcer's re-verification queries a real
Prometheus about values the test controls. Shared by the enforcer tests and the burst bench.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

IDLE = "ds01_container_idle_deadline_timestamp_seconds"
RUNTIME = "ds01_container_runtime_deadline_timestamp_seconds"
DEVICE = "ds01_container_gpu_device"
ALLOCATION = "ds01_allocation_device"


@dataclass(frozen=True)
class ContainerSeries:
    container_id: str
    name: str = ""
    user: str = "alice"
    group: str = "student"
    type: str = "docker"
    idle: float | None = None
    runtime: float | None = None
    devices: tuple[str, ...] = ()
    bound: tuple[str, ...] = ()  # devices a bound allocation gives the container
    measured_at: float | None = None  # an explicit sample time: an exporter that lags behind


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class SeriesServer:
    """Serves /metrics from what the test sets; `set()` replaces a container's series."""

    def __init__(self) -> None:
        self._series: dict[str, ContainerSeries] = {}
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = owner.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def set(self, series: ContainerSeries) -> None:
        with self._lock:
            self._series[series.container_id] = series

    def drop(self, container_id: str) -> None:
        with self._lock:
            self._series.pop(container_id, None)

    def render(self) -> str:
        with self._lock:
            items = list(self._series.values())
        families: dict[str, list[str]] = {IDLE: [], RUNTIME: [], DEVICE: [], ALLOCATION: []}
        for s in items:
            base = (
                f'container_id="{s.container_id}",container="{s.name}",user="{s.user}",'
                f'group="{s.group}",type="{s.type}"'
            )
            stamp = f" {int(s.measured_at * 1000)}" if s.measured_at is not None else ""
            if s.idle is not None:
                families[IDLE].append(f"{IDLE}{{{base}}} {_num(s.idle)}{stamp}")
            if s.runtime is not None:
                families[RUNTIME].append(f"{RUNTIME}{{{base}}} {_num(s.runtime)}")
            for device in s.devices:
                families[DEVICE].append(f'{DEVICE}{{{base},device_uuid="{device}"}} 1')
            for device in s.bound:
                families[ALLOCATION].append(
                    f'{ALLOCATION}{{allocation="a-{s.container_id[:8]}",user="{s.user}",'
                    f'group="{s.group}",container_id="{s.container_id}",'
                    f'device_uuid="{device}",state="bound"}} 1'
                )
        lines = []
        for name, rows in families.items():
            lines.append(f"# TYPE {name} gauge")
            lines.extend(rows)
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def prometheus_config(target: str, interval: str = "250ms") -> str:
    return (
        "global:\n"
        f"  scrape_interval: {interval}\n"
        f"  scrape_timeout: {interval}\n"
        f"  evaluation_interval: {interval}\n"
        "scrape_configs:\n"
        "  - job_name: ds01-exporter\n"
        f"    static_configs: [{{targets: ['{target}']}}]\n"
    )


def prometheus_has(url: str, promql: str) -> bool:
    """True once an instant query returns at least one series."""
    reply = requests.get(f"{url}/api/v1/query", params={"query": promql}, timeout=2).json()
    return bool(reply["data"]["result"])
