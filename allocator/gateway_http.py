"""HTTP/1.1 on raw sockets as a Docker API proxy needs it: heads parsed, bodies copied as they come.

Docker clients rely on things a WSGI stack hides: hijacked connections (101 upgrades, or a 200
raw stream after which both directions are raw), half-closes that end an exec's stdin, chunked
uploads and endless streamed responses. So the gateway frames messages itself and copies every
byte it does not rewrite unchanged.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

MAX_HEAD = 64 * 1024  # request or response head, as Go's net/http allows (1 MiB) but tighter
CHUNK = 256 * 1024


class ProtocolError(ValueError):
    """The peer broke HTTP framing; the connection cannot be reused."""


class HeadTooLarge(ProtocolError):
    """A head longer than MAX_HEAD."""


class BodyTooLarge(ProtocolError):
    """A body longer than the caller's bound."""


class Stream:
    """A socket with a read buffer, so a head can be read by lines and the rest passed on."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self._landing: bytearray | None = None  # reused by bodies passed straight on

    def receive(self, size: int = CHUNK) -> tuple[bytearray, int]:
        """One recv into a buffer kept for the connection (no allocation, no page faults per
        read); the bytes are valid until the next receive. At most `size` (<= CHUNK) bytes."""
        if self._landing is None:
            self._landing = bytearray(CHUNK)
        return self._landing, self.sock.recv_into(self._landing, min(size, CHUNK))

    def fill(self, size: int = CHUNK) -> bool:
        """Read more from the socket; False at end of stream."""
        data = self.sock.recv(size)
        if not data:
            return False
        self.buffer += data
        return True

    def read_until(self, marker: bytes, limit: int) -> bytes | None:
        """Bytes up to and including `marker`; None on a clean end of stream before any byte."""
        start = 0
        while True:
            found = self.buffer.find(marker, start)
            if found >= 0:
                end = found + len(marker)
                if end > limit:
                    raise HeadTooLarge(f"more than {limit} bytes before {marker!r}")
                data = bytes(self.buffer[:end])
                del self.buffer[:end]
                return data
            if len(self.buffer) > limit:
                raise HeadTooLarge(f"more than {limit} bytes without {marker!r}")
            start = max(0, len(self.buffer) - len(marker) + 1)
            if not self.fill():
                if not self.buffer:
                    return None
                raise ProtocolError("the connection closed in the middle of a message")

    def read_some(self, size: int = CHUNK) -> bytes:
        """What is buffered, else one recv; b'' at end of stream."""
        if self.buffer:
            data = bytes(self.buffer[:size])
            del self.buffer[:size]
            return data
        return self.sock.recv(size)

    def read_exact(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not self.fill(max(CHUNK, size - len(self.buffer))):
                raise ProtocolError("the connection closed in the middle of a body")
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def take(self, size: int) -> bytes | bytearray:
        """The first `size` buffered bytes (all of them without a copy)."""
        if size >= len(self.buffer):
            whole, self.buffer = self.buffer, bytearray()
            return whole  # a bytearray, sent as it is
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def has_pending(self) -> bool:
        return bool(self.buffer)


@dataclass(frozen=True)
class Head:
    """A request or status line with its headers; `raw` is what arrived, kept for byte-exactness."""

    start: str
    headers: tuple[tuple[str, str], ...]
    raw: bytes = b""

    def get(self, name: str, default: str | None = None) -> str | None:
        lower = name.lower()
        for key, value in self.headers:
            if key.lower() == lower:
                return value
        return default

    def tokens(self, name: str) -> set[str]:
        """Comma-separated header values, lower-cased (Connection, Upgrade, Transfer-Encoding)."""
        lower = name.lower()
        found: set[str] = set()
        for key, value in self.headers:
            if key.lower() == lower:
                found |= {v.strip().lower() for v in value.split(",") if v.strip()}
        return found

    def replaced(self, name: str, value: str | None) -> Head:
        """A copy with header `name` set to `value` (None removes it); `raw` is then rebuilt."""
        lower = name.lower()
        headers = tuple((k, v) for k, v in self.headers if k.lower() != lower)
        if value is not None:
            headers += ((name, value),)
        return replace(self, headers=headers, raw=b"")

    def with_start(self, start: str) -> Head:
        return replace(self, start=start, raw=b"")

    def encode(self) -> bytes:
        if self.raw:
            return self.raw
        lines = [self.start, *(f"{k}: {v}" for k, v in self.headers), "", ""]
        return "\r\n".join(lines).encode("latin-1")


@dataclass(frozen=True)
class RequestLine:
    method: str
    target: str
    version: str


def parse_head(raw: bytes) -> Head:
    text = raw.decode("latin-1")
    lines = text.split("\r\n")
    start = lines[0]
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        key, sep, value = line.partition(":")
        if not sep or not key or key != key.strip():
            raise ProtocolError(f"malformed header line {line[:80]!r}")
        headers.append((key, value.strip()))
    return Head(start, tuple(headers), raw)


def request_line(head: Head) -> RequestLine:
    parts = head.start.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ProtocolError(f"malformed request line {head.start[:80]!r}")
    return RequestLine(*parts)


def status_code(head: Head) -> int:
    parts = head.start.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"malformed status line {head.start[:80]!r}")
    return int(parts[1])


def read_head(stream: Stream) -> Head | None:
    """The next head on the stream (blank lines before it skipped); None at a clean end."""
    while True:
        raw = stream.read_until(b"\r\n\r\n", MAX_HEAD)
        if raw is None:
            return None
        if raw.strip(b"\r\n"):
            return parse_head(raw.lstrip(b"\r\n"))


# --- bodies ---------------------------------------------------------------------------------

NONE, LENGTH, CHUNKED, UNTIL_CLOSE = "none", "length", "chunked", "until-close"


@dataclass(frozen=True)
class Framing:
    kind: str
    length: int = 0


def request_framing(head: Head) -> Framing:
    if "chunked" in head.tokens("Transfer-Encoding"):
        return Framing(CHUNKED)
    length = head.get("Content-Length")
    if length is not None:
        if not length.isdigit():
            raise ProtocolError(f"bad Content-Length {length!r}")
        return Framing(LENGTH, int(length)) if int(length) else Framing(NONE)
    return Framing(NONE)


def response_framing(head: Head, method: str) -> Framing:
    status = status_code(head)
    if method == "HEAD" or status < 200 or status in (204, 304):
        return Framing(NONE)
    if "chunked" in head.tokens("Transfer-Encoding"):
        return Framing(CHUNKED)
    length = head.get("Content-Length")
    if length is not None and length.isdigit():
        return Framing(LENGTH, int(length)) if int(length) else Framing(NONE)
    return Framing(UNTIL_CLOSE)


def body_pieces(stream: Stream, framing: Framing) -> Iterator[bytes]:
    """The body's bytes exactly as framed on the wire (chunk markers included), as they come."""
    if framing.kind == LENGTH:
        left = framing.length
        while left:
            piece = stream.read_some(min(CHUNK, left))
            if not piece:
                raise ProtocolError("the connection closed in the middle of a body")
            left -= len(piece)
            yield piece
    elif framing.kind == CHUNKED:
        yield from _chunked_pieces(stream)
    elif framing.kind == UNTIL_CLOSE:
        while True:
            piece = stream.read_some()
            if not piece:
                return
            yield piece


def _chunked_pieces(stream: Stream) -> Iterator[bytes]:
    for view in _chunked_views(stream):
        yield bytes(view)


def _chunked_views(stream: Stream) -> Iterator[memoryview]:
    """The wire bytes of a chunked body, each view valid only until the next is asked for.

    Chunk-size lines are parsed where they lie and everything that arrived goes on in one
    piece: a stream of 32 KiB chunks costs one recv and one send per read, not six.
    """
    left = 0  # bytes of the current chunk (data and CRLF) not yet passed on
    while True:
        if stream.buffer:  # read ahead with the head, or a size line cut by a read
            data: bytearray | bytes = stream.take(len(stream.buffer))
            size_of_data = len(data)
        else:
            data, size_of_data = stream.receive()
            if not size_of_data:
                raise ProtocolError("the connection closed in the middle of a chunked body")
        pos, view = 0, memoryview(data)
        while True:
            if left:
                step = min(left, size_of_data - pos)
                pos, left = pos + step, left - step
                if left:
                    break
            end = data.find(b"\r\n", pos, size_of_data)
            if end < 0:
                break
            size = _chunk_size(bytes(data[pos:end]))
            pos = end + 2
            if size == 0:
                yield view[:pos]
                stream.buffer = bytearray(data[pos:size_of_data])  # trailers and what follows
                yield from (memoryview(piece) for piece in _trailers(stream))
                return
            left = size + 2  # the data and its CRLF
        if pos:
            yield view[:pos]
        if pos < size_of_data:  # a size line cut by the read: keep it, read on
            if size_of_data - pos > 4096:
                raise ProtocolError("a chunk-size line longer than 4096 bytes")
            stream.buffer = bytearray(data[pos:size_of_data])
            if not stream.fill():
                raise ProtocolError("the connection closed in the middle of a chunked body")


_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


def _chunk_size(line: bytes) -> int:
    """The size on a chunk-size line (extensions ignored); only hex digits, as Go accepts."""
    text = line.split(b";", 1)[0].strip()
    if not text or len(text) > 16 or not set(text) <= _HEX_DIGITS:
        raise ProtocolError(f"bad chunk size {text[:20]!r}")
    return int(text, 16)


def _trailers(stream: Stream) -> Iterator[bytes]:
    while True:  # trailers, then the empty line
        trailer = stream.read_until(b"\r\n", 8192)
        if trailer is None:
            raise ProtocolError("the connection closed in the chunked trailer")
        yield trailer
        if trailer == b"\r\n":
            return


def read_body(stream: Stream, framing: Framing, limit: int) -> bytes:
    """A whole body, de-chunked, bounded by `limit` bytes."""
    if framing.kind == LENGTH:
        if framing.length > limit:
            raise BodyTooLarge(f"the body is {framing.length} bytes; at most {limit} are accepted")
        return stream.read_exact(framing.length)
    if framing.kind != CHUNKED:
        return b""
    data = bytearray()
    while True:
        line = stream.read_until(b"\r\n", 4096)
        if line is None:
            raise ProtocolError("the connection closed in the middle of a chunked body")
        size = _chunk_size(line[:-2])
        if size == 0:
            for _trailer in _trailers(stream):
                pass  # read past; a create body carries no trailer we use
            return bytes(data)
        if len(data) + size > limit:
            raise BodyTooLarge(f"the body is over {limit} bytes; at most {limit} are accepted")
        data += stream.read_exact(size + 2)[:-2]


def copy_body(stream: Stream, framing: Framing, dest: socket.socket) -> None:
    pieces = _chunked_views(stream) if framing.kind == CHUNKED else body_pieces(stream, framing)
    for piece in pieces:
        dest.sendall(piece)


# --- answers the gateway makes itself ------------------------------------------------------

REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    409: "Conflict",
    413: "Payload Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def error_response(status: int, message: str, *, close: bool = False) -> bytes:
    """A Docker-style error ({"message": …}), which every Docker client prints as it is."""
    body = json.dumps({"message": message}).encode() + b"\n"
    lines = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Server: ds01-gateway",
    ]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# --- hijacked connections -------------------------------------------------------------------


def splice(client: Stream, upstream: Stream, *, drain_after_close: float = 2.0) -> None:
    """Copy both ways until both ends are done; a half-close is passed on as a half-close.

    When the daemon ends its side first (the container exited), the client gets its EOF and
    a short while to close, after which the connection is dropped.
    """
    ends = {client.sock: upstream, upstream.sock: client}
    sources = {client.sock: client, upstream.sock: upstream}
    for src in (client, upstream):  # bytes read ahead with the head go first
        if src.has_pending():
            ends[src.sock].sock.sendall(src.read_some(len(src.buffer)))
    open_reads = {client.sock, upstream.sock}
    deadline: float | None = None
    while open_reads:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select(list(open_reads), [], [], timeout)
        if not ready:
            return  # the client never closed after the daemon did
        for sock in ready:
            try:
                data = sock.recv(CHUNK)
            except OSError:
                data = b""
            dest = ends[sock].sock
            if data:
                try:
                    dest.sendall(data)
                except OSError:
                    return
                continue
            open_reads.discard(sock)
            with contextlib.suppress(OSError):  # already gone
                dest.shutdown(socket.SHUT_WR)
            if sources[sock] is upstream:
                deadline = time.monotonic() + drain_after_close
