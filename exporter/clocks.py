"""Idle and runtime clocks, persisted in the state folder so an exporter restart changes nothing.

A clock only moves forward: a restart of the exporter never makes a container look idler or
older than it is, and never resets a clock to zero. A stop/start of a container keeps its
first start (runtime), and grants the start-up grace again (last busy >= the latest start).
Time no exporter observed is never idle time: after a restart the idle clock resumes from the
moment this exporter began measuring, so the idle deadline is at least a full idle timeout
(and so at least `idle_warning`) after the restart.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

STATE_FILE = "exporter-clocks.json"
STATE_VERSION = 1


class ClockStateError(ValueError):
    """The persisted clock state cannot be read; the message names the file and the reason."""


@dataclass(frozen=True)
class ContainerClock:
    first_start: float  # Unix seconds of the first start seen; a restart does not reset it
    last_busy: float  # Unix seconds; starts at the first start (the start-up grace)


def advance_container(
    previous: ContainerClock | None,
    *,
    started_at: float | None,
    busy: bool,
    now: float,
    measured_since: float | None = None,
) -> ContainerClock:
    """The clock after one observation; never earlier than before on either hand.

    No container is called idle for time before `measured_since` (when this exporter began
    measuring), whether it is first seen now or has a clock saved by an earlier exporter.
    """
    start = started_at if started_at is not None else now
    if previous is None:
        first_start = start
        last_busy = start
    else:
        first_start = min(previous.first_start, start)
        last_busy = max(previous.last_busy, start)
    if measured_since is not None:
        last_busy = max(last_busy, min(measured_since, now))
    if busy:
        last_busy = max(last_busy, now)
    return ContainerClock(first_start, last_busy)


def advance_device(
    previous: float | None, *, busy: bool, now: float, measured_since: float | None = None
) -> float:
    """A device's last busy time: first sight when never seen busy, now while busy; never
    before `measured_since` (an unobserved downtime is not idle time)."""
    if previous is None or busy:
        return max(previous or now, now)
    if measured_since is not None:
        return max(previous, min(measured_since, now))
    return previous


class ClockBook:
    """The live clocks, owned by the collector thread (not shared with scrapes)."""

    def __init__(
        self,
        containers: dict[str, ContainerClock] | None = None,
        devices: dict[str, float] | None = None,
    ) -> None:
        self.containers: dict[str, ContainerClock] = dict(containers or {})
        self.devices: dict[str, float] = dict(devices or {})
        self.dirty = False  # anything changed since the last save
        # A change a restart could not rebuild: a new clock, a moved first start, a forgotten
        # clock. A last-busy time that only moved forward is not one: after a restart the idle
        # clock resumes from the restart anyway (measured_since), whatever was saved.
        self.urgent = False

    def observe_container(
        self,
        container_id: str,
        *,
        started_at: float | None,
        busy: bool,
        now: float,
        measured_since: float | None = None,
    ) -> ContainerClock:
        previous = self.containers.get(container_id)
        clock = advance_container(
            previous, started_at=started_at, busy=busy, now=now, measured_since=measured_since
        )
        if clock != previous:
            self.containers[container_id] = clock
            self.dirty = True
            if previous is None or clock.first_start != previous.first_start:
                self.urgent = True
        return clock

    def observe_device(
        self, device_uuid: str, *, busy: bool, now: float, measured_since: float | None = None
    ) -> float:
        previous = self.devices.get(device_uuid)
        value = advance_device(previous, busy=busy, now=now, measured_since=measured_since)
        if value != previous:
            self.devices[device_uuid] = value
            self.dirty = True
            self.urgent = self.urgent or previous is None
        return value

    def retain(self, container_ids: Iterable[str]) -> None:
        """Forget the clocks of containers that no longer exist (removed, not just stopped)."""
        keep = set(container_ids)
        gone = [cid for cid in self.containers if cid not in keep]
        for cid in gone:
            del self.containers[cid]
        if gone:
            self.dirty = self.urgent = True
            logger.debug("forgot the clocks of %d removed containers", len(gone))

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "containers": {
                cid: {"first_start": c.first_start, "last_busy": c.last_busy}
                for cid, c in sorted(self.containers.items())
            },
            "devices": {uuid: {"last_busy": t} for uuid, t in sorted(self.devices.items())},
        }

    @classmethod
    def from_json(cls, data: Any, source: str) -> ClockBook:
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise ClockStateError(f"{source}: not a version {STATE_VERSION} clock state")
        try:
            containers = {
                str(cid): ContainerClock(float(v["first_start"]), float(v["last_busy"]))
                for cid, v in (data.get("containers") or {}).items()
            }
            devices = {
                str(uuid): float(v["last_busy"]) for uuid, v in (data.get("devices") or {}).items()
            }
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ClockStateError(f"{source}: malformed entry ({exc!r})") from None
        return cls(containers, devices)


class ClockStore:
    """Reads and atomically writes the clock state file (`exporter-clocks.json`)."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(state_dir) / STATE_FILE

    def load(self) -> ClockBook:
        """The saved clocks; an empty book when there is no file yet. Raises ClockStateError."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return ClockBook()
        except OSError as exc:
            raise ClockStateError(f"{self.path}: cannot read: {exc.strerror}") from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ClockStateError(f"{self.path}: not valid JSON: {exc}") from None
        return ClockBook.from_json(data, str(self.path))

    def set_aside(self) -> Path:
        """Move an unreadable state file out of the way (kept for a person to look at)."""
        target = self.path.with_name(self.path.name + ".corrupt")
        os.replace(self.path, target)
        return target

    def save(self, book: ClockBook) -> None:
        """Write to a temporary file in the same folder, fsync, then rename over the old one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{STATE_FILE}-")
        try:
            # dumps, not dump: dump encodes chunk by chunk in Python, 3x the CPU of one string
            text = json.dumps(book.to_json(), separators=(",", ":"))
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        book.dirty = book.urgent = False
