"""Helpers for the exporter tests: scrape parsing, the wait bound, a cuttable Unix-socket proxy."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

WAIT = 30.0  # an upper bound for waits, never an expectation of speed


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse(text: str) -> list[Sample]:
    return [
        Sample(s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def scrape(url: str) -> list[Sample]:
    response = requests.get(f"{url}/metrics", timeout=10)
    response.raise_for_status()
    return parse(response.text)


def value(samples: list[Sample], name: str, **labels: str) -> float | None:
    """The one sample of `name` whose labels include `labels`, or None."""
    found = [s for s in samples if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) <= 1, f"{name}{labels} matched {len(found)} series"
    return found[0].value if found else None


class UnixProxy:
    """Forwards one Unix socket to another; `cut()` makes it go away, `restore()` brings it back."""

    def __init__(self, path: Path, target: Path) -> None:
        self.path, self.target = path, target
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def restore(self) -> None:
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(self.path))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):  # already closed by the other side
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        if self.path.exists():
            os.unlink(self.path)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # listener closed by cut()
            upstream = socket.socket(socket.AF_UNIX)
            try:
                upstream.connect(str(self.target))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        pair = {a: b, b: a}
        try:
            while True:
                readable, _, _ = select.select([a, b], [], [], 1.0)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    pair[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for sock in (a, b):
                sock.close()
