"""What an earlier output holds as done: the ids (and input digests) of its `ok` lines, which
resume and `plan` read first.

An output of a million rows is read in blocks of whole lines. A block whose every line is an
`ok` native line as batch writes it is read in one pass of a regular expression
(`RecordCodec.ok_keys_at_a_glance`); any other block is read a line at a time, with
`RecordCodec.done_key`'s refusals of lines batch did not write or wrote under other settings.
"""

from __future__ import annotations

import io
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from batch.core.idset import IdSet
from batch.sink.records import Done, RecordCodec
from batch.source.reader import LineCountGuess

BLOCK = 1 << 16  # as the input's chunks: larger ones cost memory and save no time


@dataclass
class DoneLines:
    """The lines of an earlier output that are not done rows, for compaction to take out."""

    dropped: array[int] = field(default_factory=lambda: array("Q"))  # failed or cut short
    repeated: set[str] = field(default_factory=set)  # ids with two ok lines


def collect_done(path: Path, codec: RecordCodec, done: IdSet) -> DoneLines:
    """Adds each `ok` line's id key and short input digest to `done` (a later line of an id
    wins). Raises `ConfigError` as `RecordCodec.done_key` does."""
    lines = DoneLines()
    guess = LineCountGuess(path)
    number = 0
    for block in _blocks(path):
        if guess.pending and (expected := guess.after_block(block)):
            done.reserve(expected)
        found: Sequence[Done | None] | None = codec.ok_keys_at_a_glance(block)
        if found is None:
            found = [
                codec.read_done(path, number + offset, raw)
                for offset, raw in enumerate(io.BytesIO(block), start=1)
            ]
        for ok in found:
            number += 1
            if ok is None:
                lines.dropped.append(number)
            elif not done.add(*ok):
                lines.repeated.add(ok[0])
    return lines


def _blocks(path: Path) -> Iterator[bytes]:
    """`path` in blocks of whole lines (the last one may lack its line end, cut by a kill).
    A line longer than a block is gathered in parts, not copied again with each read."""
    parts: list[bytes] = []
    with path.open("rb") as source:
        while chunk := source.read(BLOCK):
            cut = chunk.rfind(b"\n") + 1
            if not cut:
                parts.append(chunk)
                continue
            parts.append(chunk[:cut])
            yield b"".join(parts)
            parts = [chunk[cut:]] if cut < len(chunk) else []
    if parts:
        yield b"".join(parts)
