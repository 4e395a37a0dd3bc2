"""`--ordered` across reruns: output lines in input order (the run itself keeps its lines in
order with `batch.core.window`).

A rerun appends the rows it labels after those an earlier run kept, so the file is a few runs
of ascending input lines; `sort_by_line` merges them back into one, reading one line a run at
a time, and replaces the file atomically.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from batch.sink.records import line_of


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
