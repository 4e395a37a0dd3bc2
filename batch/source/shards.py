"""Shards: one input split across machines by the schedulers teams already run.

`--shard K/N` (K from 0) labels only the rows whose id hashes to K. The hash is of the row's id
(its line number when it has none, hashed as the id `7` is: see `shard_key`), so a row's shard
is the same on every machine and run, whatever the order of the lines. When no shard is given it
is read from the scheduler:

    Kubernetes Indexed Job  K = JOB_COMPLETION_INDEX; N from --shards or the job file's `shards`
    Slurm job array         K = SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN,
                            N = SLURM_ARRAY_TASK_COUNT (an array of consecutive ids, e.g. 0-7)
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from batch.core.rows import LineId, RowId, id_key
from batch.source.builder import RowBuilder


@dataclass(frozen=True)
class Shard:
    index: int  # from 0
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def suffix(self) -> str:
        """Added to the output's name: `in.shard-0-of-4.out.jsonl`."""
        return f".shard-{self.index}-of-{self.count}"

    def holds(self, key: str) -> bool:
        return self.count == 1 or shard_of(key, self.count) == self.index

    def holds_line(self, line: int, given: RowId | None) -> bool:
        """Whether the row of `line`, whose id is `given` (`RowBuilder.peek_id`), is ours."""
        return self.holds(shard_key(LineId(line) if given is None else given))


def shard_key(row_id: RowId) -> str:
    """What a row's shard is hashed from: its id key, but a row known by its line number hashes
    as it did before line numbers were kept apart from ids (`LineId`), as the id `7` does, so
    that a half-done sharded run splits its rows the same. Only the split: rows stay apart."""
    return id_key(int(row_id)) if isinstance(row_id, LineId) else id_key(row_id)


def shard_of(key: str, count: int) -> int:
    """The shard of an id key (`batch.core.rows.id_key`): blake2b, the same on every machine."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def row_id(builder: RowBuilder, line: int, raw: bytes) -> RowId:
    """The id a line's row will have: its own id, else its line number (`LineId`: a row
    without an id, or one that cannot be read)."""
    given = builder.peek_id(line, raw)
    return LineId(line) if given is None else given


def parse_shard(text: str) -> Shard:
    index, sep, count = str(text).strip().partition("/")
    if not (sep and index.isdigit() and count.isdigit()):
        raise ValueError(f"{text!r}: write the shard as K/N, e.g. 0/4 for the first of four")
    shard = Shard(int(index), int(count))
    if shard.count == 0:
        raise ValueError(
            f"{text!r}: N, the number of shards, is at least 1: write the shard as K/N, "
            "e.g. 0/4 for the first of four"
        )
    if not 0 <= shard.index < shard.count:
        last = f"{shard.count - 1}/{shard.count}"
        raise ValueError(
            f"{text!r}: in K/N, K counts from 0 and stays below N (0/{count} to {last})"
        )
    return shard


def shard_from_environ(environ: Mapping[str, str], count: int | None) -> str | None:
    """`K/N` from a Kubernetes Indexed Job or a Slurm array, or None outside them. An Indexed
    Job does not publish N: without `count` (--shards), the run is not split."""
    if (index := environ.get("JOB_COMPLETION_INDEX", "").strip()) and count is not None:
        return f"{index}/{count}"
    task, tasks = environ.get("SLURM_ARRAY_TASK_ID", ""), environ.get("SLURM_ARRAY_TASK_COUNT", "")
    if task.strip().isdigit() and tasks.strip().isdigit():
        first = environ.get("SLURM_ARRAY_TASK_MIN", "0").strip()
        offset = int(first) if first.isdigit() else 0
        return f"{int(task) - offset}/{count or int(tasks)}"
    return None
