"""The row source: input lines -> the rows this run labels, in input order.

It leaves out another shard's rows and rows an earlier run labelled from the same input (resume;
a row whose input digest changed runs again), marks an id met twice as a bad row, and, with
`--ordered`, sends a row only once the reorder window has room.
"""

from __future__ import annotations

from contextlib import aclosing
from pathlib import Path

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from batch.core.digest import (
    image_digests,
    input_digest,
    key_at_a_glance,
    may_name_images,
    short,
    short_of_line,
)
from batch.core.errors import DuplicateId
from batch.core.idset import IdSet, Sighting
from batch.core.images import has_images
from batch.core.rows import LineId, Row, RowId, id_key
from batch.core.stats import RunStats
from batch.core.window import ReorderWindow
from batch.source.builder import RowBuilder
from batch.source.reader import LineCountGuess, read_chunks
from batch.source.shards import Shard


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
        # Done ids met with another input: sent again, so neither skipped nor gone from it.
        self.changed_met = 0
        self.read_all = False  # the whole input was read: ids not met are not in it

    @property
    def openai_requests(self) -> bool:
        """The input holds OpenAI Batch requests (its first row, read already, is one)."""
        return not self._builder.native

    async def feed(self, send: MemoryObjectSendStream[Row], stopping: anyio.Event) -> None:
        """Send every row to label, until the file ends or `stopping` is set. Raises
        `ConfigError` for a line that no row of the file could run (no model anywhere)."""
        async with send, aclosing(read_chunks(self._path)) as chunks:
            async for first, lines in chunks:
                if stopping.is_set():
                    return
                self._size_table(lines)
                index = 0
                while (index := self._sieve(lines, index, first)) < len(lines):
                    number, raw = first + index, lines[index]
                    index += 1
                    if stopping.is_set():
                        return
                    if raw.strip() and not await self._send(send, number, raw, stopping):
                        return
        self.read_all = not stopping.is_set()

    async def _send(
        self, send: MemoryObjectSendStream[Row], number: int, raw: bytes, stopping: anyio.Event
    ) -> bool:
        """Sends the line's row, unless it is left out; False when `stopping` came first."""
        found = self._row(number, raw)
        if found is None or not await self._settle(*found, raw):
            return True
        row = found[0]
        row.seq, self._seq = self._seq, self._seq + 1
        if self._window is not None:
            await self._window.admit(row.seq)
            if stopping.is_set():
                return False
        await send.send(row)
        return True

    def _size_table(self, lines: list[bytes]) -> None:
        """Makes room in the id table for the rows the file is likely to hold, once."""
        for raw in lines if self._sizer.pending else ():
            if guess := self._sizer.after(raw):
                # A shard meets only its share of the ids.
                self._ids.reserve(guess // self._shard.count if self._shard else guess)
                return

    async def _settle(self, row: Row, before: int, raw: bytes) -> bool:
        """Gives the row its input digest; False for a row done before (its earlier line
        recorded `before`) from the same input and images."""
        if row.digest:
            return True  # settled at a glance
        if row.request is not None and has_images(row.request):
            row.images = await anyio.to_thread.run_sync(image_digests, row.request)
        row.digest = input_digest(raw, row.images)
        if before and short(row.digest) == before:
            self._stats.skipped += 1
            return False
        if before:
            self._changed(row)
        return True

    def _sieve(self, lines: list[bytes], start: int, first: int) -> int:
        """The index of the first line from `start` on to read in full. The lines before it
        were left out at a glance: done before from these very bytes (the common case of a
        rerun, a million times over, so this loop is kept tight). Only in a file of native
        rows, once its first line is read: an OpenAI request's id is its `custom_id`, which a
        glance does not read. Another shard's lines are neither left out nor sighted here
        (its rows may be done in a shared output): the head of a line that is not JSON is not
        its id, and only a full reading tells whose line it is."""
        if not (self._resuming and self._builder.native):
            return start
        ids, shard, skipped = self._ids, self._shard, 0
        try:
            for index in range(start, len(lines)):
                raw = lines[index]
                key = key_at_a_glance(raw)
                if key is None or (shard is not None and not shard.holds(key)):
                    return index
                if not ids.sight_unchanged(key, short_of_line(raw), first + index):
                    return index
                skipped += 1
            return len(lines)
        finally:
            self._stats.skipped += skipped

    def _changed(self, row: Row) -> None:
        """Its line replaces the old one once written (the sink counts it then: a stop may
        come first, and the old line stays until a run labels the row again)."""
        row.replaces = True
        self.changed_met += 1

    def _row(self, number: int, raw: bytes) -> tuple[Row, int] | None:
        """The line's row, and the digest its earlier ok line recorded (0: none); None when
        another shard holds it or an earlier run labelled it from the same line."""
        given = None
        if self._shard is not None or self._resuming:
            given = self._builder.peek_id(number, raw)
        if self._shard is not None and not self._shard.holds_line(number, given):
            return None  # another shard's row: not read further, not counted
        sighting = None
        before = 0  # the input digest its earlier ok line recorded
        digest = ""  # this line's, when it names no image (else `_settle` adds theirs)
        if self._resuming and given is not None:
            sighting = self._ids.sight(id_key(given), number)
            if sighting is Sighting.NEW and self._labelled_unmarked(given, raw):
                self._stats.skipped += 1
                return None
            if sighting is Sighting.DONE:
                before = self._ids.last_digest
                if before and not may_name_images(raw):
                    digest = input_digest(raw)
                if before == 0 or (digest and short(digest) == before):
                    self._stats.skipped += 1  # the same input, or a line from before digests
                    return None
        row = self._builder.build(number, raw)
        if digest:
            row.digest = digest
            self._changed(row)
        if row.has_id:
            sighting = sighting or self._ids.sight(id_key(row.id), number)
            if sighting is Sighting.REPEAT:
                row.request, row.failure = None, _duplicate(row, self._ids.first_line)
        return row, before

    def _labelled_unmarked(self, given: RowId, raw: bytes) -> bool:
        """A row without an id that an earlier run labelled from this very line, in an output
        written before `LineId`: the line number was written as an id a row gives (`"id": 7`,
        unmarked), so that id is sighted, when the digest it recorded is this line's. A line
        that names images is labelled again: its digest covers their bytes."""
        if not isinstance(given, LineId) or may_name_images(raw):
            return False
        return self._ids.sight_unchanged(id_key(int(given)), short_of_line(raw), given)


def _duplicate(row: Row, first: int) -> DuplicateId:
    earlier = f"line {first}" if first else "an earlier line"
    return DuplicateId(
        f"line {row.line}: id {row.id!r} was already used by {earlier}; ids must be unique"
    )
