"""Duration strings (`90s`, `30m`, `1.5h`, `7d`) as used throughout the policy file."""

from __future__ import annotations

import math
import re
from datetime import datetime, tzinfo

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


def format_clock(ts: float, now: float, tz: tzinfo | None = None) -> str:
    """Local time; the day too when it is not today."""
    moment, today = datetime.fromtimestamp(ts, tz), datetime.fromtimestamp(now, tz)
    if moment.date() == today.date():
        return moment.strftime("%H:%M")
    if abs(ts - now) < 6 * 86400:
        return moment.strftime("%a %H:%M")
    return moment.strftime("%Y-%m-%d %H:%M")


def format_stop(ts: float, now: float, reason: str, tz: tzinfo | None = None) -> str:
    """When a container stops, as users read it everywhere: `18:15 (in 29m, idle)`."""
    left = ts - now
    when = f"in {format_duration(left)}" if left >= 0 else f"due {format_duration(-left)} ago"
    reason_text = "idle" if reason == "idle" else "max runtime"
    return f"{format_clock(ts, now, tz)} ({when}, {reason_text})"
