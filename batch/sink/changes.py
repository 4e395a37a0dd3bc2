"""A rerun against an input that changed: rows whose input digest differs are labelled again
and their old lines taken out; rows whose id left the input are kept, or pruned (`--prune`).

The source finds the changed rows as it reads (`IdSet.last_digest` against the line's digest)
and the sink notes each one it writes (a stop may leave some unlabelled: their old lines
stay); after the run, `finish_output` rewrites the output once, through a temporary file and
an atomic rename, and only when there is something to take out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from batch.core.idset import IdSet, Sighting
from batch.core.rows import id_key, id_of_record
from batch.sink.output import rewrite
from batch.sink.records import RecordCodec, read_native


@dataclass
class Changes:
    """What the source found: ids done before whose input changed."""

    changed: IdSet = field(default_factory=IdSet)

    def __len__(self) -> int:
        return len(self.changed)

    def mark(self, key: str) -> None:
        self.changed.add(key)


def finish_output(
    path: Path, codec: RecordCodec, done: IdSet, changes: Changes, *, prune: bool
) -> int:
    """Takes out the old lines of changed rows (the first line of their id: the new one was
    appended after it) and, with `prune`, the lines of ids the input no longer holds (prune
    only once the source read the whole input). Returns how many lines of the second kind
    went."""
    if not path.exists() or not (len(changes) or prune):
        return 0
    pruned = 0
    glance = codec.ok_key_at_a_glance if codec.output_format == "native" else None

    def keep(number: int, raw: bytes) -> bool:
        nonlocal pruned
        seen = glance(raw) if glance else None
        key = seen[0] if seen else _key_of(raw)
        if key is not None and key in changes.changed:
            # Its first line is the old label: the new one was appended after it.
            return changes.changed.sight(key) is not Sighting.DONE
        if prune and key is not None and key in done and not done.was_seen(key):
            pruned += 1
            return False
        return True

    rewrite(path, keep)
    return pruned


def _key_of(raw: bytes) -> str | None:
    read = read_native(raw)
    row_id = id_of_record(read[0]) if read else None
    return None if row_id is None else id_key(row_id)
