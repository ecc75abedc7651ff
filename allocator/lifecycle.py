"""Allocation lifecycle from Docker: reconcile at start, then follow the events stream.

reserved -> bound when a container labelled ds01.allocation=<id> appears; bound -> held when it
dies (devices kept for gpu_hold_after_stop); held -> bound when it starts again; any -> released
when it is removed. The transitions are pure; `DockerWatcher` feeds them from Docker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ds01.containers import LABEL_ALLOCATION, LABEL_USER, parse_docker_time
from ds01.docker_events import EventFollower

from .model import BOUND, HELD, RELEASED, RESERVED, Allocation

if TYPE_CHECKING:
    from .service import Allocator

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContainerView:
    """What the lifecycle needs of one labelled container."""

    container_id: str
    name: str
    allocation: str
    user: str
    running: bool
    finished_at: float | None = None


@dataclass(frozen=True)
class ContainerEvent:
    action: str  # create | start | die | destroy
    container: ContainerView
    at: float


def _claims(alloc: Allocation, view: ContainerView) -> bool:
    """A container may bind an allocation only for its owner, and only one container."""
    if view.user != alloc.user:
        return False
    return not alloc.container_id or alloc.container_id == view.container_id


def transition(alloc: Allocation, event: ContainerEvent, *, hold: float) -> Allocation | None:
    """The allocation after one container event, or None when nothing changes."""
    view = event.container
    if not alloc.live or not _claims(alloc, view):
        return None
    named: dict[str, Any] = {"container_id": view.container_id, "container_name": view.name}
    if event.action in ("create", "start"):
        if alloc.state == BOUND and alloc.container_id == view.container_id:
            return None
        return replace(alloc, state=BOUND, expires_at=None, **named)
    if event.action == "die":
        if alloc.state == RESERVED and not alloc.container_id:
            alloc = replace(alloc, **named)
        return replace(alloc, state=HELD, expires_at=event.at + hold, **named)
    if event.action == "destroy":
        if not alloc.container_id and alloc.state == RESERVED:
            return None  # a container that never bound it cannot free it
        return released(alloc, at=event.at, reason="container_removed")
    return None


def released(alloc: Allocation, *, at: float, reason: str) -> Allocation:
    return replace(alloc, state=RELEASED, released_at=at, release_reason=reason, expires_at=None)


def reconcile(
    live: Iterable[Allocation],
    containers: Mapping[str, ContainerView],
    *,
    now: float,
    hold: float,
) -> list[Allocation]:
    """Changed allocations after comparing the store with Docker's labelled containers."""
    changes = []
    for alloc in live:
        view = containers.get(alloc.id)
        if view is None or not _claims(alloc, view):
            if alloc.state in (BOUND, HELD):
                changes.append(released(alloc, at=now, reason="container_gone"))
            continue  # reserved: the reservation TTL decides
        if view.running:
            event = ContainerEvent("start", view, now)
        else:
            event = ContainerEvent("die", view, view.finished_at or now)
        changed = transition(alloc, event, hold=hold)
        if changed is not None and changed.state == HELD and alloc.state == HELD:
            changed = replace(changed, expires_at=alloc.expires_at or changed.expires_at)
        if changed is not None and changed != alloc:
            if (
                changed.state == HELD
                and changed.expires_at is not None
                and changed.expires_at <= now
            ):
                changed = released(changed, at=now, reason="hold_expired")
            changes.append(changed)
    return changes


def view_from_inspect(inspect: Mapping[str, Any]) -> ContainerView:
    labels = (inspect.get("Config") or {}).get("Labels") or {}
    state = inspect.get("State") or {}
    return ContainerView(
        container_id=inspect["Id"],
        name=str(inspect.get("Name", "")).lstrip("/"),
        allocation=labels.get(LABEL_ALLOCATION, ""),
        user=labels.get(LABEL_USER, ""),
        running=bool(state.get("Running")),
        finished_at=parse_docker_time(state.get("FinishedAt")),
    )


def event_from_docker(raw: Mapping[str, Any]) -> ContainerEvent | None:
    """A container event of interest from one decoded Docker events message."""
    action = str(raw.get("Action") or raw.get("status") or "")
    if raw.get("Type", "container") != "container" or action not in (
        "create",
        "start",
        "die",
        "destroy",
    ):
        return None
    actor = raw.get("Actor") or {}
    attrs = actor.get("Attributes") or {}
    allocation = attrs.get(LABEL_ALLOCATION)
    if not allocation:
        return None
    nanos = raw.get("timeNano")
    at = nanos / 1e9 if nanos else float(raw.get("time", 0))
    view = ContainerView(
        container_id=str(actor.get("ID") or raw.get("id", "")),
        name=str(attrs.get("name", "")),
        allocation=allocation,
        user=attrs.get(LABEL_USER, ""),
        running=action == "start",
    )
    return ContainerEvent(action, view, at)


class DockerWatcher:
    """Reconciles at start, then applies the events stream; reconnects after a failure.

    `docker_client` is a client or a function that makes one (on first use, so an allocator
    started while Docker is down follows it once it answers: the follower keeps retrying).
    """

    def __init__(self, allocator: Allocator, docker_client: Any, *, retry: float = 1.0) -> None:
        self.allocator = allocator
        self._client: Callable[[], Any] = (
            docker_client if callable(docker_client) else (lambda: docker_client)
        )
        self.retry = retry
        self.errors = 0
        self._since: int | None = None
        self._reconciled_at = 0.0
        self._follower = EventFollower(
            name="allocator",
            subscribe=self._subscribe,
            catch_up=self._catch_up,
            apply=self._apply,
            retry=retry,
            on_failure=self._failed,
            log=logger,
        )

    @property
    def client(self) -> Any:
        return self._client()

    @property
    def connected(self) -> bool:
        return self._follower.connected

    def wait_connected(self, timeout: float) -> bool:
        return self._follower.wait_connected(timeout)

    def reconcile_now(self) -> int:
        """List labelled containers and reconcile; returns the number of changes."""
        views: dict[str, ContainerView] = {}
        client = self._client()
        for summary in client.api.containers(all=True, filters={"label": LABEL_ALLOCATION}):
            try:
                view = view_from_inspect(client.api.inspect_container(summary["Id"]))
            except Exception:  # noqa: BLE001 - removed between list and inspect
                logger.debug("container %s vanished while listing", summary.get("Id"))
                continue
            views.setdefault(view.allocation, view)
        return self.allocator.reconcile(views)

    def start(self) -> None:
        self._follower.start()

    def stop(self) -> None:
        self._follower.stop()

    def _subscribe(self) -> Any:
        self._since = self._since or int(self.allocator.clock.time()) - 1
        return self._client().api.events(
            since=self._since,
            decode=True,
            filters={"type": "container", "label": LABEL_ALLOCATION},
        )

    def _catch_up(self) -> None:
        # Subscribed first, then reconcile: nothing falls between the two. Events the stream
        # replays from before the reconcile are already in its picture, and applying them
        # again would flap an allocation through old states.
        self._reconciled_at = time.time()
        self.reconcile_now()

    def _apply(self, raw: Mapping[str, Any]) -> None:
        event = event_from_docker(raw)
        if event is None:
            return
        self._since = int(event.at)
        if event.at < self._reconciled_at:
            logger.debug("skipping replayed %s event of %s", event.action, event.at)
            return
        self.allocator.apply_event(event)

    def _failed(self, reason: object) -> None:
        self.errors += 1
        self.allocator.metrics.count_error("docker")
