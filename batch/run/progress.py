"""Progress: a rich bar on a terminal, a periodic log line elsewhere (CI), nothing with --quiet.

Runs as its own task reading the counters, so the hot path never touches the display.
"""

from __future__ import annotations

import logging
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from batch.core.log_events import event
from batch.core.stats import RunStats
from batch.serving.hosts import Host
from batch.source.reader import count_lines

log = logging.getLogger(__name__)


@dataclass
class InputSize:
    """The rows a run may meet: its input's lines, or a shard's share of them (about: the hash
    spreads rows evenly). Counted once, in a thread, for the progress display and the metrics;
    None until then."""

    path: Path
    shards: int = 1
    rows: int | None = None

    async def count(self) -> None:
        lines = await anyio.to_thread.run_sync(count_lines, self.path, abandon_on_cancel=True)
        self.rows = -(-lines // self.shards)


async def show_progress(
    stats: RunStats,
    size: InputSize,
    log_every: float,
    hosts: Sequence[Host] = (),
    lines: bool = False,
) -> None:
    """A bar on a terminal, else (or with `lines`: JSON logs) a line every `log_every` s;
    the total is `size`'s once the run has counted it."""
    if sys.stderr.isatty() and not lines:
        await _bar(stats, lambda: size.rows, hosts)
    else:
        await _log_lines(stats, lambda: size.rows, log_every, hosts)


def _hosts_up(hosts: Sequence[Host]) -> str:
    if len(hosts) < 2:
        return ""
    return f", hosts up {sum(h.up for h in hosts)}/{len(hosts)}"


def _per_host(stats: RunStats, hosts: Sequence[Host]) -> str:
    return ", ".join(
        f"{h.name} {stats.host_ok[h.name]}" + ("" if h.up else f" ({h.state})") for h in hosts
    )


def _concurrency(hosts: Sequence[Host]) -> str:
    """Each host's requests in flight now, and where an adaptive limit settled (`c 6/6`)."""
    parts = []
    for h in hosts:
        report = h.concurrency.report()
        settled = report.get("settled_concurrency")
        text = f"c {report['concurrency']}" + (f"/{settled}" if settled is not None else "")
        parts.append(text if len(hosts) == 1 else f"{h.name} {text}")
    return ", ".join(parts)


class RecentRate:
    """Rows a second over the last `window` seconds: an ETA that follows the run's pace now,
    not its average since a slow start."""

    def __init__(self, window: float = 30.0) -> None:
        self._window = window
        self._points: deque[tuple[float, int]] = deque()

    def add(self, now: float, done: int) -> float:
        self._points.append((now, done))
        while len(self._points) > 2 and now - self._points[0][0] > self._window:
            self._points.popleft()
        (then, before) = self._points[0]
        return (done - before) / (now - then) if now > then else 0.0


def eta(rate: float, done: int, total: int | None) -> str:
    if not total or rate <= 0 or done >= total:
        return "?"
    seconds = int((total - done) / rate)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


async def _bar(stats: RunStats, total: Callable[[], int | None], hosts: Sequence[Host]) -> None:
    columns = (
        TextColumn("[bold]labelling"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task("rows", total=None, detail="")
        recent = RecentRate()
        try:
            while True:
                rate = recent.add(stats.elapsed_s, stats.ok + stats.error)
                progress.update(
                    task,
                    completed=stats.done,
                    total=total(),
                    detail=f"ok {stats.ok} failed {stats.error} skipped {stats.skipped}"
                    + _hosts_up(hosts)
                    + f", {rate:.1f} rows/s, {_concurrency(hosts)}, "
                    + f"ETA {eta(rate, stats.done, total())}",
                )
                await anyio.sleep(0.2)
        finally:
            progress.update(task, completed=stats.done)


async def _log_lines(
    stats: RunStats, total: Callable[[], int | None], every: float, hosts: Sequence[Host]
) -> None:
    recent = RecentRate()
    recent.add(stats.elapsed_s, stats.ok + stats.error)
    while True:
        await anyio.sleep(every)
        rate = recent.add(stats.elapsed_s, stats.ok + stats.error)
        figures: dict[str, Any] = {"done": stats.done, "total": total(), "ok": stats.ok}
        figures.update(failed=stats.error, skipped=stats.skipped, rows_per_s=round(rate, 2))
        log.info(
            "progress: %d/%s rows (ok %d, failed %d, skipped %d), %.1f rows/s, ETA %s, "
            "%d retries%s, %s",
            stats.done,
            total() or "?",
            stats.ok,
            stats.error,
            stats.skipped,
            rate,
            eta(rate, stats.done, total()),
            sum(stats.retries.values()),
            _hosts_up(hosts),
            _concurrency(hosts),
            extra=event("progress", **figures),
        )
        if len(hosts) > 1:
            log.info("rows ok by host: %s", _per_host(stats, hosts))
