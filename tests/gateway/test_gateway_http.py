"""HTTP framing on real socket pairs: heads, chunked bodies byte for byte, bounds, splicing."""

from __future__ import annotations

import socket
import threading

import pytest

from allocator.gateway_http import (
    CHUNKED,
    LENGTH,
    NONE,
    UNTIL_CLOSE,
    BodyTooLarge,
    Framing,
    HeadTooLarge,
    ProtocolError,
    Stream,
    body_pieces,
    error_response,
    parse_head,
    read_body,
    read_head,
    request_framing,
    response_framing,
    splice,
)


def stream_of(data: bytes) -> Stream:
    a, b = socket.socketpair()
    b.sendall(data)
    b.close()
    return Stream(a)


def test_head_is_parsed_and_kept_byte_exact():
    raw = b"POST /v1.41/containers/create?name=x HTTP/1.1\r\nHost: docker\r\nX-A:  b \r\n\r\n"
    stream = stream_of(raw + b"{}")
    head = read_head(stream)
    assert head is not None and head.encode() == raw
    assert head.get("x-a") == "b" and head.get("missing") is None
    assert stream.read_exact(2) == b"{}"
    changed = head.replaced("Content-Length", "2")
    assert b"Content-Length: 2\r\n" in changed.encode() and changed.encode().endswith(b"\r\n\r\n")


def test_clean_end_and_torn_head():
    assert read_head(stream_of(b"")) is None
    with pytest.raises(ProtocolError):
        read_head(stream_of(b"GET / HTTP/1.1\r\nHost"))
    with pytest.raises(ProtocolError):
        parse_head(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n")


def test_head_over_the_bound_is_refused():
    with pytest.raises(HeadTooLarge):
        read_head(stream_of(b"GET / HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n"))


def test_chunked_body_is_copied_exactly_including_markers_and_trailers():
    wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n"
    stream = stream_of(wire + b"NEXT")
    assert b"".join(body_pieces(stream, Framing(CHUNKED))) == wire
    assert stream.read_exact(4) == b"NEXT"
    assert read_body(stream_of(wire), Framing(CHUNKED), 100) == b"hello world"


def test_bodies_are_bounded():
    with pytest.raises(BodyTooLarge):
        read_body(stream_of(b"x" * 10), Framing(LENGTH, 10), 5)
    with pytest.raises(BodyTooLarge):
        read_body(stream_of(b"a\r\n" + b"x" * 10 + b"\r\n0\r\n\r\n"), Framing(CHUNKED), 5)
    with pytest.raises(ProtocolError):
        read_body(stream_of(b"zz\r\n"), Framing(CHUNKED), 5)


def test_framing_rules():
    head = parse_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert request_framing(head).kind == CHUNKED
    assert request_framing(parse_head(b"GET / HTTP/1.1\r\n\r\n")).kind == NONE
    assert request_framing(parse_head(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n")).length == 3
    with pytest.raises(ProtocolError):
        request_framing(parse_head(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"))
    ok = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n")
    assert response_framing(ok, "HEAD").kind == NONE
    raw = parse_head(b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\n")
    assert response_framing(raw, "POST").kind == UNTIL_CLOSE  # a hijack without upgrade
    assert response_framing(parse_head(b"HTTP/1.1 204 No Content\r\n\r\n"), "POST").kind == NONE


def test_error_response_is_docker_shaped():
    answer = error_response(403, 'ds01: no "way"', close=True)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 Forbidden") and b"Connection: close" in head
    assert body == b'{"message": "ds01: no \\"way\\""}\n'


def test_splice_passes_a_half_close_on_and_waits_for_the_answer():
    """exec -i: the client ends stdin with shutdown(SHUT_WR); the daemon still answers."""
    client_outer, client_inner = socket.socketpair()
    upstream_inner, upstream_outer = socket.socketpair()
    worker = threading.Thread(target=splice, args=(Stream(client_inner), Stream(upstream_inner)))
    worker.start()
    client_outer.sendall(b"input")
    client_outer.shutdown(socket.SHUT_WR)
    received = b""
    while True:  # the daemon reads stdin to its end
        piece = upstream_outer.recv(100)
        if not piece:
            break
        received += piece
    assert received == b"input"
    upstream_outer.sendall(b"output")
    upstream_outer.close()
    answer = b""
    while True:
        piece = client_outer.recv(100)
        if not piece:
            break
        answer += piece
    assert answer == b"output"
    worker.join(5)
    assert not worker.is_alive()
    client_outer.close()


def test_splice_drops_a_client_that_never_closes_after_the_daemon_did():
    client_outer, client_inner = socket.socketpair()
    upstream_inner, upstream_outer = socket.socketpair()
    upstream_outer.close()
    worker = threading.Thread(
        target=splice,
        args=(Stream(client_inner), Stream(upstream_inner)),
        kwargs={"drain_after_close": 0.2},
    )
    worker.start()
    assert client_outer.recv(10) == b""  # the client sees the end of output
    worker.join(5)
    assert not worker.is_alive()
    client_outer.close()
