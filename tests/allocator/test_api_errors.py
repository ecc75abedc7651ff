"""Every allocator answer is JSON: bad bodies are 400/413, a full disk is a 503 with a message."""

from __future__ import annotations

import http.client

import pytest

from allocator.client import AllocatorClient, Refused
from allocator.store_sqlite import SqliteAllocationStore
from ds01.jsonbody import json_depth, parse_json
from tests.allocator.conftest import as_user
from tests.harness.disk import small_disk_at


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self._path = path

    def connect(self) -> None:
        import socket

        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self._path)


def raw(runtime, method: str, path: str, body: bytes = b"") -> tuple[int, str, bytes]:
    conn = _Unix(str(runtime.socket_path))
    headers = {"Content-Type": "application/json"} if body else {}
    conn.request(method, path, body=body or None, headers=headers)
    reply = conn.getresponse()
    answer = reply.status, reply.getheader("Content-Type", ""), reply.read()
    conn.close()
    return answer


def test_depth_ignores_brackets_in_strings():
    assert json_depth(b'{"a": [1, {"b": "[[[{{{"}]}') == 3
    assert json_depth(b'"\\"[["') == 0
    with pytest.raises(ValueError, match="nested deeper than 64"):
        parse_json(b"[" * 65 + b"]" * 65, max_bytes=1000)
    assert parse_json(b"[" * 64 + b"]" * 64, max_bytes=1000) is not None
    many_shallow = b"[" + b",".join([b"[]"] * 100) + b"]"  # 101 brackets, depth 2
    assert parse_json(many_shallow, max_bytes=1000) == [[]] * 100
    with pytest.raises(ValueError, match="nested deeper than 64"):
        parse_json(b'{"a": "[[[", "b": ' + b"[" * 65 + b"]" * 65 + b"}", max_bytes=1000)


@pytest.mark.parametrize(
    ("method", "path", "body", "code", "error"),
    [
        ("POST", "/v1/allocations", b"[" * 10_000, 400, "invalid"),
        ("POST", "/v1/allocations", b"{not json", 400, "invalid"),
        ("POST", "/v1/allocations", b"", 400, "invalid"),
        ("POST", "/v1/allocations", b'{"pad": "' + b"x" * 70_000 + b'"}', 413, None),
        ("PUT", "/v1/allocations", b"{}", 405, "method_not_allowed"),
        ("GET", "/nowhere", b"", 404, None),
        ("DELETE", "/v1/allocations/a-1", b"[" * 10_000, 400, "invalid"),
    ],
    ids=["deep", "syntax", "empty", "oversized", "method", "path", "deep-delete"],
)
def test_bad_requests_get_json_errors(allocator, method, path, body, code, error):
    status, content_type, text = raw(allocator, method, path, body)

    assert status == code
    assert content_type == "application/json"
    import json

    answer = json.loads(text)
    assert answer["message"]
    if error:
        assert answer["error"] == error


def test_a_full_disk_is_a_503_with_a_message_and_the_allocator_recovers(
    allocator_factory, short_dir
):
    """A decision is answered only once its line is in the decision log: the few that still
    fit in the log's last page are kept; then a clear 503; after the disk is freed, grants
    resume and every decision answered meanwhile reaches the database."""
    with small_disk_at(short_dir / "full", size="2m") as disk:
        runtime = allocator_factory(name="full")
        alice = as_user(AllocatorClient(str(runtime.socket_path)), "alice")
        first = alice.allocate()
        disk.fill()

        answered = []
        with pytest.raises(Refused) as refused:
            for _ in range(200):  # a log line is a few hundred bytes; a page is 4 KiB
                alloc = alice.allocate()
                answered.append(alice.release(alloc["id"]))

        assert refused.value.status == 503
        assert refused.value.reason == "unavailable"
        assert "cannot record allocations right now" in refused.value.message
        assert "full" in refused.value.message
        assert len(answered) < 50
        live = {a.id for a in runtime.allocator.live()}
        assert live == {first["id"]}  # the refused grant left nothing behind
        disk.free()
        again = alice.allocate()
        assert again["state"] == "reserved"
        runtime.stop()
        store = SqliteAllocationStore(runtime.store.path)
        with store.transaction() as tx:
            assert {a.id for a in tx.live()} == {first["id"], again["id"]}
            kept = {a.id: a.state for a in tx.history()}
        store.close()
        assert all(kept[a["id"]] == "released" for a in answered)


def test_a_chunked_body_is_read_and_a_body_on_release_is_still_checked(allocator):
    """No Content-Length is no body only without chunks: both kinds reach the JSON checks."""
    import json

    conn = _Unix(str(allocator.socket_path))
    conn.putrequest("POST", "/v1/allocations")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    for chunk in (b'{"count": 1,', b' "queue": false}'):
        conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    conn.send(b"0\r\n\r\n")
    reply = conn.getresponse()
    granted = json.loads(reply.read())
    conn.close()
    assert reply.status == 201, granted
    alloc_id = granted["allocation"]["id"]

    status, _, text = raw(allocator, "DELETE", f"/v1/allocations/{alloc_id}", b"{bad")
    assert (status, json.loads(text)["error"]) == (400, "invalid")
    status, _, text = raw(allocator, "DELETE", f"/v1/allocations/{alloc_id}")
    assert (status, json.loads(text)["allocation"]["state"]) == (200, "released")
