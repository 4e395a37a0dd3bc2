"""`--ordered`: output lines in input order, in memory bounded by a window, not by the file.

Rows finish out of order. The writer holds each finished line until every row sent before it
has been written; the reader sends row `seq` only once `seq < next_to_write + window`, so at
most `window` lines are ever held, however slow one row is (a slow row stalls the window, it
does not grow it).

A rerun appends the rows it labels after those an earlier run kept, so the file is a few runs
of ascending input lines; `sort_by_line` merges them back into one, reading one line a run at
a time, and replaces the file atomically.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

import anyio

from batch.records import line_of

T = TypeVar("T")
WINDOW = 1024  # rows; a held line is its output line only (a row's images are not kept)


class ReorderWindow(Generic[T]):
    def __init__(self, size: int | None = None) -> None:
        size = WINDOW if size is None else size
        if size < 1:
            raise ValueError("the reorder window needs room for at least one row")
        self._size = size
        self._next = 0  # the seq of the next line to write
        self._held: dict[int, T] = {}
        self._moved = anyio.Event()
        self._closed = False

    def has_room(self, seq: int) -> bool:
        return self._closed or seq < self._next + self._size

    async def admit(self, seq: int) -> None:
        """Wait until row `seq` may be sent (or the window is closed)."""
        while not self.has_room(seq):
            await self._moved.wait()

    def close(self) -> None:
        """Wake every waiting reader: the run is stopping."""
        self._closed = True
        self._moved.set()

    def put(self, seq: int, item: T) -> list[T]:
        """Hold `item` (a row's output line); return the items now due, in input order."""
        self._held[seq] = item
        due: list[T] = []
        while (ready := self._held.pop(self._next, None)) is not None:
            due.append(ready)
            self._next += 1
        if due:
            self._moved.set()
            self._moved = anyio.Event()
        return due

    def rest(self) -> list[T]:
        """What is still held (rows after one that never finished: a stopped run), in order."""
        lines = [self._held[seq] for seq in sorted(self._held)]
        self._held.clear()
        return lines


def sort_by_line(path: Path) -> bool:
    """Merge the ascending runs of `path` into input order; False when it was in order already."""
    starts = _run_starts(path)
    if len(starts) < 2:
        return False
    bounds = [*starts, path.stat().st_size]
    scratch = path.with_name(path.name + ".sort-tmp")
    with scratch.open("wb") as target:
        handles = [path.open("rb") for _ in starts]
        try:
            runs = [
                _keyed(h, begin, end)
                for h, begin, end in zip(handles, bounds, bounds[1:], strict=False)
            ]
            for _, raw in heapq.merge(*runs):
                target.write(raw)
        finally:
            for handle in handles:
                handle.close()
        target.flush()
        os.fsync(target.fileno())
    os.replace(scratch, path)
    return True


def _run_starts(path: Path) -> list[int]:
    starts: list[int] = []
    last = None
    offset = 0
    with path.open("rb") as source:
        for raw in source:
            line = line_of(raw)
            if last is None or line < last:
                starts.append(offset)
            last = line
            offset += len(raw)
    return starts


def _keyed(handle: Any, begin: int, end: int) -> Iterator[tuple[int, bytes]]:
    handle.seek(begin)
    while handle.tell() < end and (raw := handle.readline()):
        yield line_of(raw), raw
