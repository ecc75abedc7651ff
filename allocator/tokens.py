"""Random ids for allocations and tickets, drawn from one buffer of kernel randomness.

`secrets.token_hex` asks the kernel once per id, and each call hands the GIL over in the
middle of a decision; a 4 KiB buffer refilled from os.urandom asks once per 512 ids. The
bytes are the same kernel randomness: ids stay unguessable.
"""

from __future__ import annotations

import os
import threading


class TokenSource:
    """Hex ids of `nbytes` random bytes each, thread-safe."""

    def __init__(self, chunk: int = 4096) -> None:
        self._chunk = chunk
        self._buffer = b""
        self._used = 0
        self._lock = threading.Lock()

    def hex(self, nbytes: int = 8) -> str:
        with self._lock:
            if len(self._buffer) - self._used < nbytes:
                self._buffer, self._used = os.urandom(max(self._chunk, nbytes)), 0
            start, self._used = self._used, self._used + nbytes
        return self._buffer[start : start + nbytes].hex()
