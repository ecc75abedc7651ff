"""One container create through the gateway: checks, bind pins, a GPU grant, the rewrite.

Each step that takes something (a pin, an allocation) gives it back when a later step or
dockerd fails, so a refused or failed create leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

from ds01.containers import LABEL_ALLOCATION, container_type

from .client import AllocatorUnavailable, Refused
from .gateway_backends import ClientGone, GpuGrant
from .gateway_create import (
    CreateRefused,
    GpuAsk,
    bind_refusal,
    bind_sources,
    create_refusal,
    gpu_ask,
    named_volumes,
    owner_stamps,
    profile_hint,
    referenced_containers,
    rewrite_create,
    stamp_labels,
    with_bind_sources,
)
from .gateway_http import Head
from .gateway_pins import LABEL_PINS, PinError, open_source
from .gateway_routes import Refusal

if TYPE_CHECKING:
    from .gateway_connection import Connection

logger = logging.getLogger(__name__)


class CreateFlow:
    """POST /containers/create for one caller on one connection."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.gateway, self.caller = conn.gateway, conn.caller

    def run(self, head: Head, target: str) -> bool:
        gateway, caller = self.gateway, self.caller
        body = self.conn.json_body(head, gateway.policy.gateway.max_create_body)
        runtime = gateway.probe.default_runtime()
        try:
            if not caller.admin:
                problem = create_refusal(body, home=caller.home, rules=gateway.rules)
                if problem:
                    logger.info("refused create user=%s: %s", caller.user, problem)
                    raise Refusal(403, f"ds01: {problem}")
                for field, ref in referenced_containers(body):
                    self.conn.check_owner(ref, field=field)
                for field, volume in named_volumes(body):
                    self.conn.check_volume_owner(volume, field=field)
            ask = gpu_ask(body, default_runtime=runtime)
            stamp_labels(body.get("Labels"), {})  # validates the labels' shape
        except CreateRefused as exc:
            raise Refusal(400, f"ds01: {exc}") from None
        name = dict(parse_qsl(urlsplit(target).query)).get("name", "")
        ctype = container_type(body.get("Labels") or {})  # the same rule the exporter uses
        if name and not caller.admin:
            self._check_name_free(name, ctype)
        pinned = None if caller.admin else self._pin_binds(body)
        try:
            return self._forward_pinned(head, target, body, ask, ctype, name, runtime, pinned)
        except BaseException:
            if pinned:
                gateway.pins.release(pinned[1])
            raise

    def _check_name_free(self, name: str, ctype: str) -> None:
        """Names are one namespace for all users: say whose, and how to pick another."""
        owner = self.gateway.probe.container_owner(name)
        if owner is None or owner == self.caller.user:
            return  # free, or the caller's own: dockerd answers as it always does
        hint = (
            "choose another project name (docker-compose -p NAME, or COMPOSE_PROJECT_NAME)"
            if ctype == "compose"
            else "choose another name"
        )
        raise Refusal(409, f"ds01: the name {name} is taken by another user's container; {hint}")

    def _pin_binds(self, body: dict) -> tuple[dict, str] | None:
        """Open each bind source once, check where it really is, and pin exactly that."""
        sources = bind_sources(body)
        if not sources:
            return None
        pins, rules, home = self.gateway.pins, self.gateway.rules, self.caller.home
        token = pins.new_token()
        replaced = {}
        try:
            for index, source in enumerate(sources):
                try:
                    opened = open_source(source.path)
                except PinError as exc:
                    raise Refusal(400, f"ds01: {source.field}: {exc.strerror}") from None
                try:
                    problem = bind_refusal(
                        opened.real, source.field, home=home, rules=rules, realpath=_same
                    )
                    if problem:
                        raise Refusal(403, f"ds01: {problem}")
                    replaced[source.key] = pins.pin(token, index, opened)
                finally:
                    os.close(opened.fd)
        except BaseException:
            pins.release(token)
            raise
        return with_bind_sources(body, replaced), token

    def _forward_pinned(
        self,
        head: Head,
        target: str,
        body: dict,
        ask: GpuAsk | None,
        ctype: str,
        name: str,
        runtime: str,
        pinned: tuple[dict, str] | None,
    ) -> bool:
        gateway, caller = self.gateway, self.caller
        if pinned:
            body = pinned[0]
        grant = None
        if ask is not None:
            grant = self._claimed(body, ask) or self._grant(ask, ctype, name)
        stamps = owner_stamps(
            user=caller.user,
            group=caller.group,
            ctype=ctype,
            allocation=grant.allocation if grant else "",
        )
        if pinned:
            stamps[LABEL_PINS] = pinned[1]
        rewritten = rewrite_create(
            body,
            stamps=stamps,
            ask=ask,
            devices=grant.devices if grant else (),
            default_runtime=runtime,
        )
        try:
            status, keep = self.conn.forward_json(head, rewritten)
        except BaseException:
            if grant:
                gateway.grants.release(grant.allocation)
            raise
        if pinned and status >= 300:
            gateway.pins.release(pinned[1])
        if grant and status >= 300:
            gateway.grants.release(grant.allocation)  # nothing will bind it: free it now
            logger.info("create failed (%d); released allocation %s", status, grant.allocation)
        elif grant:
            logger.info(
                "created user=%s type=%s name=%s allocation=%s devices=%s",
                caller.user,
                ctype,
                name or "-",
                grant.allocation,
                ",".join(grant.devices),
            )
        return keep

    def _claimed(self, body: dict, ask: GpuAsk) -> GpuGrant | None:
        """The caller's own reservation named in the labels (the wrapper waited for it)."""
        labels = body.get("Labels") or {}
        wanted = labels.get(LABEL_ALLOCATION) if isinstance(labels, dict) else None
        if not wanted or not isinstance(wanted, str):
            return None
        grant = self.gateway.grants.claim(wanted, user=self.caller.user, count=max(1, ask.count))
        if grant is None:
            logger.info("user=%s named allocation %s, not theirs to use", self.caller.user, wanted)
        return grant

    def _grant(self, ask: GpuAsk, ctype: str, name: str) -> GpuGrant:
        gateway, caller = self.gateway, self.caller
        try:
            profile, full_gpu = profile_hint(ask.named, gateway.grants.device_table)
            return gateway.grants.grant(
                user=caller.user,
                count=max(1, ask.count),
                profile=profile,
                full_gpu=full_gpu,
                container_type=ctype,
                name=name,
                still_wanted=self.conn.client_still_there,
            )
        except Refused as exc:
            status = exc.status if 400 <= exc.status < 600 else 503
            raise Refusal(status, exc.message) from None
        except AllocatorUnavailable as exc:
            raise Refusal(503, f"ds01: {exc}; GPU containers need the allocator") from None
        except ClientGone:
            logger.info("user=%s left while waiting for a GPU; ticket cancelled", caller.user)
            raise Refusal(499, "client gone", close=True) from None


def _same(path: str) -> str:
    return path
