"""JSON bodies: the nesting depth counted outside strings, and the limits that make a 400."""

from __future__ import annotations

import json
import random

import pytest

from ds01.jsonbody import JsonBodyError, json_depth, parse_json


def scanned_depth(text: bytes) -> int:
    """The definition, one byte at a time: a quote opens or closes a string, a backslash in a
    string escapes the next byte, and only brackets outside strings nest."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in text:
        if in_string:
            if escaped:
                escaped = False
            elif byte == ord("\\"):
                escaped = True
            elif byte == ord('"'):
                in_string = False
        elif byte == ord('"'):
            in_string = True
        elif byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif byte in b"]}":
            depth -= 1
    return deepest


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        (b"", 0),
        (b"1", 0),
        (b"[]", 1),
        (b'{"a": [1, {"b": []}]}', 4),
        (b'["[[[", "{{"]', 1),  # brackets inside strings do not nest
        (b'["\\"[[[", "]"]', 1),  # nor after an escaped quote
        (b'["\\\\", [[]]]', 3),  # an escaped backslash ends before the closing quote
        (b'["a" "b" [', 2),  # invalid JSON still gets a depth (json.loads says what is wrong)
        (b'"[[[', 0),  # an unterminated string runs to the end
        (b'["\\', 1),
        (b"]]][[", 0),  # closing first never counts as nesting
    ],
)
def test_depth_counts_brackets_outside_strings_only(text, depth):
    assert json_depth(text) == depth == scanned_depth(text)


def test_depth_matches_the_byte_by_byte_definition_on_random_bodies():
    rng = random.Random(16)
    alphabet = b'[]{}"\\ a\n'
    for _ in range(20_000):
        text = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        assert json_depth(text) == scanned_depth(text), text


def test_depth_of_a_large_webhook_like_body():
    alert = {"labels": {"summary": 'say "[" or {'}, "annotations": {"a": "b\\\\"}, "n": [[1]]}
    body = json.dumps({"alerts": [alert] * 500}).encode()

    assert json_depth(body) == scanned_depth(body) == 5


def test_a_body_nested_too_deep_is_refused_before_parsing():
    with pytest.raises(JsonBodyError, match="nested deeper than 64 levels"):
        parse_json(b"[" * 100_000, max_bytes=1_000_000)


def test_a_body_nested_to_the_limit_parses():
    assert parse_json(b"[[[]]]", max_bytes=100, max_depth=3) == [[[]]]
    with pytest.raises(JsonBodyError, match="nested deeper than 2 levels"):
        parse_json(b"[[[]]]", max_bytes=100, max_depth=2)


def test_an_oversized_body_is_refused():
    with pytest.raises(JsonBodyError, match="larger than 10 bytes"):
        parse_json(b"[1, 2, 3, 4]", max_bytes=10)


def test_invalid_json_names_the_syntax_error():
    with pytest.raises(JsonBodyError, match="not valid JSON"):
        parse_json(b'{"a": }', max_bytes=100)
