"""JSON request bodies with bounded size and nesting: bad input is a 400, never a 500.

`json.loads` recurses once per level: a body of 100,000 `[` raises RecursionError, which web
frameworks answer with a 500 page. The depth is checked first, in one linear pass.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 64


class JsonBodyError(ValueError):
    """The body is not acceptable JSON; the message says why (for a 400)."""


def json_depth(text: bytes) -> int:
    """The deepest nesting of arrays and objects, ignoring brackets inside strings."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in text:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def parse_json(body: bytes, *, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """The parsed body, or JsonBodyError naming the limit or the syntax error."""
    if len(body) > max_bytes:
        raise JsonBodyError(f"body larger than {max_bytes} bytes")
    # The depth never exceeds the count of opening brackets: most bodies need no scan.
    opening = body.count(b"[") + body.count(b"{")
    if opening > max_depth and json_depth(body) > max_depth:
        raise JsonBodyError(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise JsonBodyError(f"body is not valid JSON: {exc}") from None
