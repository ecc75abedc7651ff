"""Allocation ids and tickets from one buffer of kernel randomness."""

from __future__ import annotations

import threading

from allocator.tokens import TokenSource


def test_ids_are_hex_of_the_asked_length_and_never_repeat_across_refills():
    source = TokenSource(chunk=64)  # a refill every 8 ids
    ids = [source.hex(8) for _ in range(2000)]
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids)
    assert len(set(ids)) == len(ids)
    assert len(source.hex(100)) == 200  # more than a chunk at once


def test_threads_drawing_at_once_never_get_the_same_id():
    source = TokenSource(chunk=256)
    drawn: list[list[str]] = [[] for _ in range(8)]

    def draw(mine: list[str]) -> None:
        mine.extend(source.hex(8) for _ in range(500))

    threads = [threading.Thread(target=draw, args=(mine,)) for mine in drawn]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [i for mine in drawn for i in mine]
    assert len(set(every)) == len(every) == 4000
