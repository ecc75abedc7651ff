"""Granting: which waiting request gets which free device, and writing the grant.

The FIFO plan (`queue.plan_fifo`) decides among waiters; a request nobody waits ahead of is
its plan of one. A device with someone else's compute process is never handed out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ds01.durations import format_duration
from ds01.gpu import GpuDevice, GpuReading

from .advice import device_names
from .allocator_core import AllocatorCore
from .model import RESERVED, Allocation, AllocationRequest, Denial
from .placement import usable_by
from .queue import Candidate, Waiter, plan_fifo
from .store import StoreTx

logger = logging.getLogger(__name__)


class Granting(AllocatorCore):
    """Grants, always inside the caller's transaction and under its lock."""

    def _serve(
        self, tx: StoreTx, live: list[Allocation], reading: GpuReading, now: float
    ) -> list[Waiter]:
        """Grant what the FIFO plan allows, inside the caller's transaction; returns the woken."""
        if not len(self.queue):
            return []
        held = self._held(live)
        free = [d.device_uuid for d in reading.devices if d.device_uuid not in held]
        owners = self._process_owners(reading, free)
        waiters = list(self.queue)
        candidates = []
        for waiter in waiters:
            req = waiter.request
            group = self.policy.group_of(req.user)
            eligible = self.placement.eligible(
                reading.devices,
                profile=req.profile,
                full_gpu=req.full_gpu,
                allow_full_gpu=group.allow_full_gpu,
            )
            usable = usable_by((d.device_uuid for d in eligible), req.user, owners)
            candidates.append(Candidate(waiter.ticket, req.count, usable))
        woken = []
        holding: dict[str, int] = {}
        counted: set[str] = set()  # users whose cluster-wide holdings were read
        for alloc in live:
            holding[alloc.user] = holding.get(alloc.user, 0) + len(alloc.devices)
        for ticket, devices in plan_fifo(candidates, free):
            waiter = next(w for w in waiters if w.ticket == ticket)
            req = waiter.request
            limit = self.policy.group_of(req.user).max_gpus
            if self._shared and req.user not in counted:
                holding[req.user] = sum(tx.holdings(req.user).values())  # every node's
                counted.add(req.user)
            if limit is not None and holding.get(req.user, 0) + req.count > limit:
                denial = Denial("quota", f"GPU quota exceeded for {req.user} while waiting")
                self.queue.resolve(ticket, denial, now)
                self.metrics.denied("quota", now - waiter.enqueued_at)
                woken.append(waiter)
                continue
            alloc, record = self._insert_grant(
                tx, req, waiter.group, devices, reading, waiter.enqueued_at, now
            )
            waiter.history = record  # written by _wake, once the grant is committed
            holding[req.user] = holding.get(req.user, 0) + req.count
            self.queue.resolve(ticket, alloc, now)
            woken.append(waiter)
        return woken

    def _grant(
        self,
        tx: StoreTx,
        request: AllocationRequest,
        group: str,
        eligible: Sequence[GpuDevice],
        reading: GpuReading,
        live: list[Allocation],
        now: float,
    ) -> tuple[Allocation, dict[str, Any]] | None:
        """With nobody waiting, the FIFO plan of a queue of one (no Waiter, no ticket): the
        devices it gives, granted; None when too few are free (the request queues)."""
        held = self._held(live)
        free = [d.device_uuid for d in eligible if d.device_uuid not in held]
        usable = usable_by(free, request.user, self._process_owners(reading, free))
        plan = plan_fifo([Candidate("", request.count, usable)], free)
        if not plan:
            return None
        [(_, devices)] = plan
        return self._insert_grant(tx, request, group, devices, reading, now, now)

    def _insert_grant(
        self,
        tx: StoreTx,
        req: AllocationRequest,
        group: str,
        devices: tuple[str, ...],
        reading: GpuReading,
        enqueued_at: float,
        now: float,
    ) -> tuple[Allocation, dict[str, Any]]:
        """A reserved allocation of `devices`, inserted; with the history record to write
        once the transaction has committed."""
        alloc = Allocation(
            id=self._tokens.hex(8),
            user=req.user,
            group=group,
            devices=devices,
            state=RESERVED,
            created_at=now,
            expires_at=now + self.policy.reservation_ttl,
            container_name=req.container_name,
            container_type=req.container_type,
            profile=req.profile or "",
            node=self.node,
        )
        tx.insert(alloc)
        waited = now - enqueued_at
        self.metrics.granted(waited)
        logger.info(
            "granted allocation=%s user=%s devices=%s waited=%.3fs",
            alloc.id,
            req.user,
            ",".join(devices),
            waited,
        )
        record = {
            "at": now,
            "event": "grant",
            "user": req.user,
            "container": req.container_name,
            "decision": "granted",
            "detail": device_names(reading, devices)
            + (f" after waiting {format_duration(waited)}" if waited >= 1 else ""),
        }
        return alloc, record

    def _held(self, live: list[Allocation]) -> set[str]:
        """Devices not free: in a live allocation, or used by a running container."""
        held = {u for a in live for u in a.devices}
        held.update(self.running.devices())
        return held

    def _process_owners(self, reading: GpuReading, uuids: list[str]) -> dict[str, set[str]]:
        """For free devices with compute processes: who runs them ("?" when unknown)."""
        owners: dict[str, set[str]] = {}
        for uuid_ in uuids:
            sample = reading.samples.get(uuid_)
            if sample is not None and sample.processes:  # no tuple built for idle devices
                owners[uuid_] = {self.owner_of_pid(pid) or "?" for pid in sample.process_pids}
        return owners
