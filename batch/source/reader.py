"""The input file as numbered lines, read in large chunks off the event loop.

Reading line by line through a thread would cost a thread hop a line; a chunk costs one per
64 KiB. Larger chunks save nothing measurable and cost memory: each chunk is copied and split
into a list of lines while the previous list is still alive.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path

import aiofiles
import anyio

CHUNK = 1 << 16
BOM = b"\xef\xbb\xbf"


async def read_chunks(path: Path) -> AsyncGenerator[tuple[int, list[bytes]], None]:
    """The file's lines a chunk at a time: (the number of the chunk's first line, its lines
    without their line ends), numbered from 1 as an editor numbers them. Blank lines are
    included, for the caller to skip, so that a line's number is its place in the list; a
    leading BOM is dropped. A resume skips most lines without a step a line on the event loop."""
    number = 1
    pending = b""
    first = True
    # Shielded: a run cancelled while the thread opens the file would never get it to close.
    with anyio.CancelScope(shield=True):
        source = await aiofiles.open(path, "rb")
    try:
        while chunk := await source.read(CHUNK):
            if first:
                chunk = chunk.removeprefix(BOM)
                first = False
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            if lines:
                yield number, lines
                number += len(lines)
    finally:
        with anyio.CancelScope(shield=True):  # a cancelled run still closes its file
            await source.close()
    if pending:
        yield number, [pending]


def count_lines(path: Path) -> int:
    """A quick estimate of the rows to come, for the progress bar (blank lines included)."""
    lines = 0
    last = b"\n"
    with path.open("rb") as source:
        while chunk := source.read(CHUNK):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n")


class LineCountGuess:
    """Guesses a file's line count from its size and the length of its first lines, so that a
    table of ids can be sized once instead of doubling (and briefly holding two) as it fills."""

    SAMPLE = 1024

    def __init__(self, path: Path) -> None:
        self._size = path.stat().st_size
        self._lines = 0
        self._bytes = 0
        self.pending = True

    def after(self, raw: bytes) -> int | None:
        """Feed each line until it returns the guess (then `pending` turns False)."""
        return self._after(1, len(raw) + 1)

    def after_block(self, block: bytes) -> int | None:
        """As `after`, for a block of whole lines."""
        return self._after(block.count(b"\n"), len(block))

    def _after(self, lines: int, size: int) -> int | None:
        self._lines += lines
        self._bytes += size
        if self._lines < self.SAMPLE and self._bytes < self._size:
            return None
        self.pending = False
        return int(self._size / (self._bytes / max(self._lines, 1)) * 1.05)
