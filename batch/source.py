"""The row source: input lines -> the rows this run labels, in input order.

It leaves out another shard's rows and rows an earlier run labelled (resume), marks an id met
twice as a bad row, and, with `--ordered`, sends a row only once the reorder window has room.
"""

from __future__ import annotations

from contextlib import aclosing
from pathlib import Path

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from batch.builder import RowBuilder
from batch.errors import BadInput
from batch.idset import IdSet, Sighting
from batch.reader import LineCountGuess, read_lines
from batch.reorder import ReorderWindow
from batch.rows import Row, id_key
from batch.shards import Shard
from batch.summary import RunStats


class RowSource:
    def __init__(
        self,
        path: Path,
        builder: RowBuilder,
        ids: IdSet,
        stats: RunStats,
        *,
        shard: Shard | None = None,
        window: ReorderWindow[tuple[bytes, bool]] | None = None,
    ) -> None:
        self._path = path
        self._builder = builder
        self._ids = ids  # ids done before the run, then every id the source meets
        self._resuming = len(ids) > 0
        self._stats = stats
        self._shard = shard
        self._window = window
        self._sizer = LineCountGuess(path)
        self._seq = 0

    async def feed(self, send: MemoryObjectSendStream[Row], stopping: anyio.Event) -> None:
        """Send every row to label, until the file ends or `stopping` is set. Raises
        `ConfigError` for a line that no row of the file could run (no model anywhere)."""
        async with send, aclosing(read_lines(self._path)) as lines:
            async for number, raw in lines:
                if stopping.is_set():
                    return
                if self._sizer.pending and (guess := self._sizer.after(raw)):
                    # A shard meets only its share of the ids.
                    self._ids.reserve(guess // self._shard.count if self._shard else guess)
                row = self._row(number, raw)
                if row is None:
                    continue
                row.seq, self._seq = self._seq, self._seq + 1
                if self._window is not None:
                    await self._window.admit(row.seq)
                    if stopping.is_set():
                        return
                await send.send(row)

    def _row(self, number: int, raw: bytes) -> Row | None:
        """The line's row; None when another shard holds it or an earlier run labelled it."""
        given = None
        if self._shard is not None or self._resuming:
            given = self._builder.peek_id(number, raw)
        if self._shard is not None and not self._shard.holds_line(number, given):
            return None  # another shard's row: not read further, not counted
        sighting = None
        if self._resuming and given is not None:
            sighting = self._ids.sight(id_key(given))
            if sighting is Sighting.DONE:
                self._stats.skipped += 1
                return None
        row = self._builder.build(number, raw)
        if row.has_id:
            sighting = sighting or self._ids.sight(id_key(row.id))
            if sighting is Sighting.REPEAT:
                row.request, row.failure = None, _duplicate(row)
        return row


def _duplicate(row: Row) -> BadInput:
    return BadInput(
        f"line {row.line}: id {row.id!r} was already used by an earlier line; ids must be unique"
    )
