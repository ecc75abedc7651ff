"""Allocation lifecycle from Docker: reconcile at start, then follow the events stream.

reserved -> bound when a container labelled ds01.allocation=<id> appears; bound -> held when it
dies (devices kept for gpu_hold_after_stop); held -> bound when it starts again; any -> released
when it is removed. Once bound, an allocation follows its container by id (adopted containers
carry no label). The transitions are pure; `DockerWatcher` feeds them from Docker, and also
reports every running GPU container, labelled or not, so none of its devices is ever granted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ds01.containers import LABEL_ALLOCATION, LABEL_USER, classify, parse_docker_time
from ds01.docker_events import EventFollower
from ds01.gpu import GpuDevice

from .model import BOUND, HELD, RELEASED, RESERVED, Allocation
from .store import StoreUnavailable

if TYPE_CHECKING:
    from .service import Allocator

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContainerView:
    """What the lifecycle and adoption need of one container (labelled or not)."""

    container_id: str
    name: str
    allocation: str  # the ds01.allocation label ("" when none): a claim, checked
    user: str  # the owner as classified (ds01.user, else /home/<u> paths, else "unknown")
    running: bool
    finished_at: float | None = None
    gpu_devices: tuple[str, ...] = ()  # device UUIDs from its config; () = no GPU access known
    container_type: str = "docker"
    started_at: float | None = None

    @property
    def short_id(self) -> str:
        return self.container_id[:12]


EVENT_ACTIONS = ("create", "start", "die", "destroy")


@dataclass(frozen=True)
class ContainerEvent:
    action: str  # create | start | die | destroy
    container: ContainerView
    at: float


def _claims(alloc: Allocation, view: ContainerView) -> bool:
    """A container may bind an allocation only for its owner, and only one container.

    Once bound, the container id (a fact, not a label) is what ties the two together.
    """
    if alloc.container_id:
        return alloc.container_id == view.container_id
    return view.user == alloc.user


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
    by_container: Mapping[str, ContainerView] | None = None,
) -> list[Allocation]:
    """Changed allocations after comparing the store with Docker's containers.

    `containers` is keyed by the allocation label; `by_container` by container id, for
    allocations already bound (an adopted container has no label).
    """
    changes = []
    for alloc in live:
        view = containers.get(alloc.id)
        if (view is None or not _claims(alloc, view)) and alloc.container_id and by_container:
            view = by_container.get(alloc.container_id)
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


def view_from_inspect(
    inspect: Mapping[str, Any], inventory: Iterable[GpuDevice] = ()
) -> ContainerView:
    """The view of one container, classified against the GPU inventory (type, owner, devices)."""
    facts = classify(inspect, inventory)
    state = inspect.get("State") or {}
    return ContainerView(
        container_id=facts.container_id,
        name=facts.name,
        allocation=facts.allocation,
        user=facts.user,
        running=facts.running,
        finished_at=parse_docker_time(state.get("FinishedAt")),
        gpu_devices=facts.gpu_devices,
        container_type=facts.type,
        started_at=facts.started_at,
    )


def event_from_docker(raw: Mapping[str, Any]) -> ContainerEvent | None:
    """A container event of interest from one decoded Docker events message.

    Events carry labels only: a `start` needs an inspect (see `DockerWatcher`) for devices.
    """
    action = str(raw.get("Action") or raw.get("status") or "")
    if raw.get("Type", "container") != "container" or action not in EVENT_ACTIONS:
        return None
    actor = raw.get("Actor") or {}
    attrs = actor.get("Attributes") or {}
    allocation = attrs.get(LABEL_ALLOCATION, "")
    if action == "create" and not allocation:
        return None  # only a labelled create binds; an unlabelled one is looked at on start
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
        """List containers and reconcile; returns the number of changes (adoptions included).

        Not only labelled ones: any running GPU container blocks its devices from grants, and
        an adopted one carries no label. A stopped container matters only with a label or
        an allocation bound to it; the others are not inspected.
        """
        devices = self.allocator.inventory.current().devices
        bound = {a.container_id for a in self.allocator.live() if a.container_id}
        views = []
        for summary in self.client.api.containers(all=True):
            labels = summary.get("Labels") or {}
            if (
                summary.get("State") != "running"
                and LABEL_ALLOCATION not in labels
                and summary.get("Id") not in bound
            ):
                continue
            try:
                inspect = self.client.api.inspect_container(summary["Id"])
            except Exception:  # noqa: BLE001 - removed between list and inspect
                logger.debug("container %s vanished while listing", summary.get("Id"))
                continue
            views.append(view_from_inspect(inspect, devices))
        return self.allocator.reconcile(views)

    def inspected(self, event: ContainerEvent) -> ContainerEvent:
        """A `start` event completed by an inspect: events carry labels, not GPU devices."""
        if event.action != "start":
            return event
        try:
            inspect = self.client.api.inspect_container(event.container.container_id)
        except Exception:  # noqa: BLE001 - removed already; its die/destroy events follow
            logger.debug("container %s vanished before inspect", event.container.short_id)
            return event
        view = view_from_inspect(inspect, self.allocator.inventory.current().devices)
        return replace(event, container=replace(view, running=True))

    def start(self) -> None:
        self._follower.start()

    def stop(self) -> None:
        self._follower.stop()

    def _subscribe(self) -> Any:
        self._since = self._since or int(self.allocator.clock.time()) - 1
        return self._client().api.events(
            since=self._since,
            decode=True,
            filters={"type": "container", "event": list(EVENT_ACTIONS)},
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
        self.allocator.apply_event(self.inspected(event))

    def _failed(self, reason: object) -> None:
        self.errors += 1
        # The store down (PostgreSQL) is not Docker's failure: say which one is broken.
        source = "store" if isinstance(reason, StoreUnavailable) else "docker"
        self.allocator.metrics.count_error(source)
