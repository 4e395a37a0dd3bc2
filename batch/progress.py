"""Progress: a rich bar on a terminal, a periodic log line elsewhere (CI), nothing with --quiet.

Runs as its own task reading the counters, so the hot path never touches the display.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from batch.hosts import Host
from batch.reader import count_lines
from batch.summary import RunStats

log = logging.getLogger(__name__)


async def show_progress(
    stats: RunStats,
    input_path: Path,
    log_every: float,
    hosts: Sequence[Host] = (),
    shards: int = 1,
) -> None:
    total: int | None = None

    async def count() -> None:
        nonlocal total
        lines = await anyio.to_thread.run_sync(count_lines, input_path, abandon_on_cancel=True)
        total = -(-lines // shards)  # a shard's share, about: the hash spreads rows evenly

    async with anyio.create_task_group() as tg:
        tg.start_soon(count)
        if sys.stderr.isatty():
            await _bar(stats, lambda: total, hosts)
        else:
            await _log_lines(stats, lambda: total, log_every, hosts)


def _hosts_up(hosts: Sequence[Host]) -> str:
    if len(hosts) < 2:
        return ""
    return f", hosts up {sum(h.up for h in hosts)}/{len(hosts)}"


def _per_host(stats: RunStats, hosts: Sequence[Host]) -> str:
    return ", ".join(
        f"{h.name} {stats.host_ok[h.name]}" + ("" if h.up else f" ({h.state})") for h in hosts
    )


async def _bar(stats: RunStats, total: Callable[[], int | None], hosts: Sequence[Host]) -> None:
    columns = (
        TextColumn("[bold]labelling"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task("rows", total=None, detail="")
        try:
            while True:
                progress.update(
                    task,
                    completed=stats.done,
                    total=total(),
                    detail=f"ok {stats.ok} failed {stats.error} skipped {stats.skipped}"
                    + _hosts_up(hosts),
                )
                await anyio.sleep(0.2)
        finally:
            progress.update(task, completed=stats.done)


async def _log_lines(
    stats: RunStats, total: Callable[[], int | None], every: float, hosts: Sequence[Host]
) -> None:
    while True:
        await anyio.sleep(every)
        elapsed = stats.elapsed_s
        rate = (stats.ok + stats.error) / elapsed if elapsed else 0.0
        log.info(
            "progress: %d/%s rows (ok %d, failed %d, skipped %d), %.1f rows/s, %d retries%s",
            stats.done,
            total() or "?",
            stats.ok,
            stats.error,
            stats.skipped,
            rate,
            sum(stats.retries.values()),
            _hosts_up(hosts),
        )
        if len(hosts) > 1:
            log.info("rows ok by host: %s", _per_host(stats, hosts))
