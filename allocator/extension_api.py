"""The body of `POST /v1/extensions` and the answers of the extension routes."""

from __future__ import annotations

from typing import Any

from ds01.durations import parse_duration

from .extension_desk import ExtensionDesk, ExtensionGrant
from .extensions import KINDS

MAX_EXTENSION = 365 * 86400.0


class ExtensionBodyError(ValueError):
    """A malformed extension request: the message names the field."""


def parse_extension(body: Any) -> tuple[str, float | None, str]:
    """(container, seconds or None for the group's default, kind) from a JSON body."""
    if not isinstance(body, dict):
        raise ExtensionBodyError("the body must be a JSON object")
    container = body.get("container")
    if not isinstance(container, str) or not container or len(container) > 255:
        raise ExtensionBodyError(f"container: must be a container name or id, got {container!r}")
    raw = body.get("duration")
    seconds: float | None = None
    if raw is not None:
        try:
            if isinstance(raw, bool):
                raise ValueError("not a duration")
            seconds = parse_duration(raw)
        except (TypeError, ValueError) as exc:
            raise ExtensionBodyError(
                f"duration: expected a duration like 90s, 30m, 4h, got {raw!r} ({exc})"
            ) from None
        if not 0 < seconds <= MAX_EXTENSION:
            raise ExtensionBodyError(f"duration: must be above 0 and at most 365d, got {raw!r}")
    kind = body.get("kind", "runtime")
    if kind not in KINDS:
        raise ExtensionBodyError(f"kind: must be one of {', '.join(KINDS)}, got {kind!r}")
    return container, seconds, kind


def grant_answer(grant: ExtensionGrant) -> dict[str, Any]:
    return {
        "extension": grant.extension.to_json(),
        "total_seconds": grant.total_seconds,
        "extensions_used": grant.count,
    }


def listing(desk: ExtensionDesk, user: str | None) -> dict[str, Any]:
    return {"extensions": [e.to_json() for e in desk.active(user)]}
