"""Appending whole records to a file of lines, or nothing.

A full disk can take part of a write. Left in the file, that part would glue itself to the
next record and a reader would lose both, so a failed append is cut back to where the last
whole record ended; only when the cut fails too does the file keep a torn tail.
"""

from __future__ import annotations

import os


class TornAppend(OSError):
    """The append failed and so did cutting it back: the file now ends in a torn record."""


def append_whole(fd: int, data: bytes, size: int) -> None:
    """Append all of `data` to `fd` (opened O_APPEND), whose first `size` bytes are whole
    records. On failure cut the file back to `size` and raise the OSError; if the cut fails
    too, raise TornAppend with the write's errno."""
    try:
        written = os.write(fd, data)
        while written < len(data):  # a short write: the disk filled up part-way
            written += os.write(fd, data[written:])
    except OSError as exc:
        try:
            os.ftruncate(fd, size)
        except OSError:
            raise TornAppend(exc.errno, exc.strerror) from exc
        raise
