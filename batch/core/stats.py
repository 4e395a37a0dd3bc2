"""The run's counters: what has been written, so the numbers always match the output file.
The source counts skipped rows, the sink each written row; the summary is built from them."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from batch.core.chat import Usage
from batch.core.errors import Cause
from batch.core.rows import RowResult


@dataclass
class RunStats:
    """Counts what has been written, so the numbers always match the output file."""

    ok: int = 0
    error: int = 0
    skipped: int = 0
    changed: int = 0  # done before, labelled again: their input changed
    not_in_input: int = 0
    pruned: int = 0
    same_as: int = 0  # results copied from a row with the same request
    cached: int = 0  # results taken from the cache
    attempts: int = 0
    usage: Usage = field(default_factory=Usage)
    retries: Counter[Cause] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    host_ok: Counter[str] = field(default_factory=Counter)  # rows by the host of their last attempt
    host_failed: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def done(self) -> int:
        return self.ok + self.error + self.skipped

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def count(self, result: RowResult) -> None:
        if result.failure is None:
            self.ok += 1
            if result.host is not None:
                self.host_ok[result.host] += 1
        else:
            self.error += 1
            self.errors[result.failure.kind] += 1
            if result.host is not None:
                self.host_failed[result.host] += 1
        self.changed += result.row.replaces  # labelled again: its input changed
        self.same_as += result.same_as is not None
        self.cached += result.cached
        self.attempts += result.attempts
        self.usage.add(result.usage)
        self.retries.update(result.retries)
