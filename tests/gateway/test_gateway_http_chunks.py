"""Chunked bodies through the gateway's framing: byte-exact at every read split, few big sends."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from allocator.gateway_http import (
    CHUNK,
    CHUNKED,
    Framing,
    ProtocolError,
    Stream,
    body_pieces,
    copy_body,
    read_body,
)


def stream_of(data: bytes) -> Stream:
    a, b = socket.socketpair()
    b.sendall(data)
    b.close()
    return Stream(a)


class TrickleStream(Stream):
    """Reads at most `step` bytes at a time, as a slow peer's segments arrive."""

    def __init__(self, sock: socket.socket, step: int) -> None:
        super().__init__(sock)
        self.step = step

    def fill(self, size: int = CHUNK) -> bool:
        return super().fill(min(size, self.step))

    def receive(self, size: int = CHUNK) -> tuple[bytearray, int]:
        return super().receive(min(size, self.step))


def chunked(*chunks: bytes, trailer: bytes = b"") -> bytes:
    wire = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    return wire + b"0\r\n" + trailer + b"\r\n"


WIRE = chunked(b"hello", b"x" * 300, b"\r\n0\r\n", b"tail", trailer=b"X-T: 1\r\n")


@pytest.mark.parametrize("step", [1, 2, 3, 5, 7, 13, 64])
def test_chunked_body_is_byte_exact_whatever_the_read_sizes(step):
    a, b = socket.socketpair()
    b.sendall(WIRE + b"NEXT")
    b.close()
    stream = TrickleStream(a, step)
    assert b"".join(body_pieces(stream, Framing(CHUNKED))) == WIRE
    assert stream.read_exact(4) == b"NEXT"  # the next message starts where the body ended


def test_small_chunks_that_arrived_together_go_on_in_one_piece():
    """Docker streams 32 KiB chunks; a send per marker and per chunk halved `docker cp`."""
    wire = chunked(*[b"%03d" % i for i in range(100)])
    pieces = list(body_pieces(stream_of(wire), Framing(CHUNKED)))
    assert b"".join(pieces) == wire
    assert len(pieces) <= 3  # everything before the last chunk, the last chunk, its trailer end


@pytest.mark.parametrize("size", [b"-5", b"+5", b"1_0", b"0x5", b"", b"1" * 17, b"zz"])
def test_chunk_sizes_other_than_hex_digits_are_refused(size):
    """Go's reader (dockerd) takes hex digits only; the gateway must frame bodies as it does."""
    try:
        lenient = min(64, max(0, int(size, 16)))  # what Python's int() would make of it
    except ValueError:
        lenient = 5
    wire = size + b"\r\n" + b"x" * lenient + b"\r\n0\r\n\r\n"
    with pytest.raises(ProtocolError):
        b"".join(body_pieces(stream_of(wire), Framing(CHUNKED)))
    with pytest.raises(ProtocolError):
        read_body(stream_of(wire), Framing(CHUNKED), 100)


def test_a_body_cut_off_mid_chunk_is_an_error_not_a_short_body():
    wire = chunked(b"x" * 50)[:30]
    with pytest.raises(ProtocolError):
        b"".join(body_pieces(stream_of(wire), Framing(CHUNKED)))


def test_an_endless_chunk_size_line_is_refused():
    with pytest.raises(ProtocolError):
        b"".join(body_pieces(stream_of(b"1" * 5000), Framing(CHUNKED)))


def test_copy_body_passes_a_stream_larger_than_its_read_buffer_on_unchanged():
    """The reused read buffer: every piece must be sent before the next read overwrites it."""
    wire = chunked(*[os.urandom(32768) for _ in range(40)])  # 1.3 MB: several reads
    source, source_peer = socket.socketpair()
    dest, dest_peer = socket.socketpair()
    received = bytearray()

    def write() -> None:
        source_peer.sendall(wire + b"NEXT")
        source_peer.close()

    def read() -> None:
        while piece := dest_peer.recv(65536):
            received.extend(piece)

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    stream = Stream(source)
    copy_body(stream, Framing(CHUNKED), dest)
    dest.close()
    for thread in threads:
        thread.join(30)
    assert bytes(received) == wire
    assert stream.read_exact(4) == b"NEXT"
