"""The reorder window of `--ordered`: rows finish out of order, and the writer holds each
finished line until every row sent before it has been written; the reader sends row `seq` only
once `seq < next_to_write + window`, so at most `window` lines are ever held, however slow one
row is (a slow row stalls the window, it does not grow it)."""

from __future__ import annotations

from typing import Generic, TypeVar

import anyio

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
