"""The data behind `container ls`: Docker, the allocator, the exporter and the policy, each
optional (a missing source shows "-"), turned into one record per container and a table."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import requests

from ds01.containers import LABEL_ALLOCATION, LABEL_DEVICES, LABEL_TYPE, LABEL_USER
from ds01.policy import Exemption, Policy, PolicyError, load_policy_or_default

from .client import AllocatorClient, AllocatorUnavailable, Refused
from .container_views import history_rows, in_force, last_stop, moment, relative, stop_story, table


def exporter_state(url: str | None) -> Mapping[str, Any] | None:
    """The exporter's /api/state, or None when it cannot be read (the list shows "-")."""
    if not url:
        return None
    try:
        response = requests.get(url.rstrip("/") + "/api/state", timeout=2)
        response.raise_for_status()
        data = response.json()
    except (requests.RequestException, ValueError):
        return None
    return data if isinstance(data, Mapping) else None


def container_timing(
    state: Mapping[str, Any] | None, container_id: str, now: float
) -> tuple[str, str]:
    """("idle for", "next stop") for one container from the exporter's state; "-" if unknown."""
    entry = state_entries(state).get(container_id) if state else None
    if state and entry is None:
        return "-", "-"
    shown = in_force(entry, now=now)
    return shown.idle_for, shown.next_stop


def state_entries(state: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    """The exporter's containers by id (a list, or an older mapping form)."""
    entries = (state or {}).get("containers") or []
    if isinstance(entries, Mapping):
        entries = [dict(v, container_id=k) for k, v in entries.items()]
    return {
        str(e.get("container_id")): e
        for e in entries
        if isinstance(e, Mapping) and e.get("container_id")
    }


def _finished_at(container: Any) -> float | None:
    from ds01.containers import parse_docker_time

    try:
        return parse_docker_time(container.attrs["State"]["FinishedAt"])
    except (KeyError, TypeError, ValueError):
        return None


class ListingContext:
    """Everything `ls` reads besides Docker, each part optional (a missing one shows "-")."""

    def __init__(self, args: argparse.Namespace, client: AllocatorClient) -> None:
        self.client = client
        try:
            self.devices = {d["device_uuid"]: d for d in client.devices()}
        except (AllocatorUnavailable, Refused):
            self.devices = {}
        self.policy: Policy | None
        try:
            self.policy = load_policy_or_default(args.policy)
        except PolicyError:
            self.policy = None
        url = args.exporter_url
        if url is None and self.policy is not None:
            url = self.policy.services.exporter_url
        self.entries = state_entries(exporter_state(url))
        try:
            allocations = client.allocations(everyone=bool(args.all))
        except (AllocatorUnavailable, Refused):
            allocations = []
        self.holds = {a["id"]: a.get("expires_at") for a in allocations if a["state"] == "held"}
        self._histories: dict[str, list[dict[str, Any]]] = {}

    def history(self, user: str, me: str) -> list[dict[str, Any]]:
        if user not in self._histories:
            try:
                found = self.client.history(user=None if user == me else user, limit=1000)
            except (AllocatorUnavailable, Refused):
                found = []
            self._histories[user] = found
        return self._histories[user]


def describe(container: Any, ctx: ListingContext, *, me: str, now: float) -> dict[str, Any]:
    """One container as `ls --json` shows it (and the table is made from)."""
    labels = container.labels or {}
    uuids = [u for u in labels.get(LABEL_DEVICES, "").split(",") if u]
    owner = labels.get(LABEL_USER, "")
    devices = [
        {
            "index": (ctx.devices.get(u) or {}).get("index"),
            "profile": (ctx.devices.get(u) or {}).get("profile"),
            "uuid": u,
        }
        for u in uuids
    ]
    item: dict[str, Any] = {
        "name": container.name,
        "id": container.id,
        "user": owner,
        "state": container.status,
        "devices": devices,
    }
    if container.status == "running":
        exemptions: tuple[Exemption, ...] = ()
        if ctx.policy is not None:
            at = datetime.fromtimestamp(now, tz=UTC)
            exemptions = ctx.policy.limits_for(
                owner, labels.get(LABEL_TYPE, "docker"), at
            ).exemptions
        shown = in_force(ctx.entries.get(container.id), exemptions=exemptions, now=now)
        item.update(shown.to_json(), idle_for=shown.idle_for, next_stop_text=shown.next_stop)
        item["notes"] = shown.notes(now)
    elif container.status in ("exited", "dead"):
        keep = ctx.policy.keep_alive.path if ctx.policy else "/workspace/.keep-alive"
        story = stop_story(
            name=container.name,
            record=last_stop(ctx.history(owner, me), container.id),
            exit_code=container.attrs.get("State", {}).get("ExitCode"),
            finished_at=_finished_at(container),
            hold_until=ctx.holds.get(labels.get(LABEL_ALLOCATION, "")),
            now=now,
            keep_alive_path=keep,
        )
        item["stop"] = story.to_json()
    return item


def device_text(devices: list[dict[str, Any]], *, verbose: bool = False) -> str:
    """`0:2 (1g.18gb)`: the index users type and the profile; UUIDs only with -v."""
    parts = []
    for d in devices:
        if d["index"] is None:
            parts.append(d["uuid"] if verbose else d["uuid"][:12])
            continue
        text = f"{d['index']} ({d['profile'] or 'full GPU'})"
        parts.append(f"{text} {d['uuid']}" if verbose else text)
    return ", ".join(parts) or "-"


def render_listing(items: list[dict[str, Any]], *, now: float, verbose: bool = False) -> str:
    """The table, then for each stopped container when and why it stopped and what to do."""
    lines = []
    rows = [("NAME", "GPU", "STATE", "IDLE FOR", "NEXT STOP", "NOTES")]
    for item in items:
        stop = item.get("stop")
        notes = "; ".join(item.get("notes", []))
        if stop:
            notes = f"stopped {relative(stop['at'], now)}: {stop['reason']}" if stop["at"] else ""
        rows.append(
            (
                item["name"],
                device_text(item["devices"], verbose=verbose),
                item["state"],
                item.get("idle_for", "-"),
                item.get("next_stop_text", "-"),
                notes,
            )
        )
    lines.append(table(rows))
    for item in items:
        stop = item.get("stop")
        if not stop:
            continue
        at = f" at {moment(stop['at'], now)}" if stop["at"] else ""
        lines.append(f"\n{item['name']} stopped{at}: {stop['why']}.")
        for step in stop["what_to_do"]:
            lines.append(f"  - {step}")
    return "\n".join(lines)


def render_history(items: list[dict[str, Any]], *, now: float) -> str:
    return table([("WHEN", "WHAT", "CONTAINER", "DETAIL"), *history_rows(items, now=now)])
