"""Duration strings (`90s`, `30m`, `1.5h`, `7d`) as used throughout the policy file."""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")


def parse_duration(text: str | int | float) -> float:
    """Return seconds; a bare number is seconds so flags like `--collect-interval 5` work."""
    if isinstance(text, bool):
        raise ValueError(f"expected a duration like 90s, 30m, 1.5h or 7d, got {text!r}")
    if isinstance(text, int | float):
        value = float(text)
    else:
        match = _PATTERN.match(str(text))
        if match is None:
            try:
                value = float(str(text).strip())
            except ValueError:
                raise ValueError(
                    f"expected a duration like 90s, 30m, 1.5h or 7d, got {text!r}"
                ) from None
        else:
            value = float(match.group(1)) * _UNITS[match.group(2)]
    if math.isnan(value) or value < 0:
        raise ValueError(f"a duration must not be negative, got {text!r}")
    return value


def format_duration(seconds: float) -> str:
    """Short human form (`1h 5m`, `42s`) for messages and tables."""
    if math.isinf(seconds):
        return "never"
    seconds = max(0, int(round(seconds)))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m {secs}s" if secs and minutes < 10 else f"{minutes}m"
    return f"{secs}s"
