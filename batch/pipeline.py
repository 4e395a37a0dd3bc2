"""The run: one task group, one pipeline.

    reader ──rows──▶ labellers (2 per slot) ──results──▶ writer (sole owner of the output file)

Both streams are bounded, so memory follows the concurrency, never the input's size. A fatal
error or a signal stops the reader and the labellers; the writer always drains what completed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
from collections.abc import Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from batch.backends.base import Backend
from batch.backends.select import open_backends
from batch.config import JobConfig
from batch.errors import BadInput, BatchError, ConfigError, FatalRunError
from batch.idset import IdSet
from batch.label import Labeller, RetryPolicy, RowResult
from batch.output import OutputWriter, encode_line, prepare_output
from batch.pool import HostPool
from batch.progress import show_progress
from batch.reader import read_lines
from batch.rows import Row, RowBuilder, id_key
from batch.schema import OutputSchema, load_schema
from batch.summary import RunStats, RunSummary, build_summary, write_summary

log = logging.getLogger(__name__)

WRITE_BATCH = 256  # lines gathered into one write when rows complete faster than disk writes


def fingerprint(config: JobConfig, schema: OutputSchema | None) -> str:
    """Names the settings that shape a label; rows from different settings never mix."""
    shaping: dict[str, Any] = {
        "model": config.model,
        "schema": schema.json_schema if schema else None,
        "template": config.template,
        "system": config.system,
        "options": config.options,
    }
    if config.think is not None:  # only when set, so that earlier outputs keep their stamp
        shaping["think"] = config.think
    canonical = json.dumps(shaping, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


async def run_job(
    config: JobConfig,
    *,
    backends: Sequence[Backend] | None = None,
    handle_signals: bool = False,
    show: bool = False,
) -> RunSummary:
    """Run `config` to the end (or to a signal) and write its summary.

    Raises `ConfigError` or `FatalRunError` (after writing the summary) when the run cannot go
    on; a row's failure is an error line in the output, never raised. `backends` replaces the
    Ollama hosts of `config`; `handle_signals` and `show` are for the CLI.
    """
    if not config.input.is_file():
        raise ConfigError(f"input file {config.input} does not exist")
    if config.output_path.resolve() == config.input.resolve():
        raise ConfigError(f"the output would overwrite the input {config.input}: change --output")
    stats = RunStats()  # the clock starts here: reading the earlier output is part of the run
    schema = load_schema(config.schema_ref) if config.schema_ref else None
    stamp = fingerprint(config, schema)
    done = await anyio.to_thread.run_sync(
        lambda: prepare_output(config.output_path, stamp, overwrite=config.overwrite)
    )
    if backends is None:
        backends = open_backends(config)
    pool = HostPool(backends, config.concurrency)
    builder = RowBuilder(
        model=config.model,
        options=config.options,
        template=config.template,
        system=config.system,
        format=schema.json_schema if schema else None,
    )
    policy = RetryPolicy(config.max_attempts, config.backoff, config.backoff_max)
    run = _Run(config, builder, Labeller(pool, policy, schema), done, stamp, pool.capacity, stats)
    log.info("labelling %s with %s on %s", config.input, config.model, ", ".join(pool.names))
    try:
        await run.execute(handle_signals=handle_signals, show=show)
    finally:
        await pool.aclose()
        summary = build_summary(
            run.stats,
            input_path=config.input,
            output_path=config.output_path,
            fingerprint=stamp,
            hosts=pool.names,
            model=config.model,
            fatal=str(run.fatal) if run.fatal else None,
            stopped_by=run.stopped_by,
        )
        await anyio.to_thread.run_sync(write_summary, config.summary_path, summary)
    if run.fatal is not None:
        raise run.fatal
    return summary


@dataclass
class _Run:
    config: JobConfig
    builder: RowBuilder
    labeller: Labeller
    done: IdSet  # ids already ok in the output
    stamp: str
    slots: int
    stats: RunStats
    stopping: anyio.Event = field(default_factory=anyio.Event)
    work: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    fatal: BatchError | None = None
    stopped_by: str | None = None

    async def execute(self, *, handle_signals: bool, show: bool) -> None:
        # Twice the slots: while some rows sleep before a retry, others keep every slot busy.
        labellers = 2 * self.slots
        rows_send, rows_receive = anyio.create_memory_object_stream[Row](labellers)
        results_send, results_receive = anyio.create_memory_object_stream[RowResult](labellers)
        async with anyio.create_task_group() as outer:
            outer.start_soon(self._write, results_receive)
            watchers = anyio.CancelScope()
            outer.start_soon(self._watch, watchers, handle_signals, show)
            with self.work:
                async with results_send, rows_receive, anyio.create_task_group() as work:
                    work.start_soon(self._read, rows_send)
                    for _ in range(labellers):
                        work.start_soon(self._label, rows_receive.clone(), results_send.clone())
            watchers.cancel()

    async def _watch(self, scope: anyio.CancelScope, handle_signals: bool, show: bool) -> None:
        with scope:
            async with anyio.create_task_group() as tg:
                if handle_signals:
                    tg.start_soon(self._on_signals)
                if show:
                    tg.start_soon(
                        show_progress, self.stats, self.config.input, self.config.log_every
                    )

    async def _read(self, send: MemoryObjectSendStream[Row]) -> None:
        seen = IdSet(len(self.done))
        async with send:
            try:
                async with aclosing(read_lines(self.config.input)) as lines:
                    async for number, raw in lines:
                        if self.stopping.is_set():
                            return
                        row = self.builder.build(number, raw)
                        if row.has_id:
                            key = id_key(row.id)
                            if not seen.add(key):
                                row.request, row.failure = None, _duplicate(row)
                            elif key in self.done:
                                self.stats.skipped += 1
                                continue
                        await send.send(row)
            except anyio.BrokenResourceError:
                pass  # every labeller has stopped (a signal): nothing left to feed
            except BatchError as exc:  # e.g. a row with no model and no --model
                self.fatal = exc
                self.stopping.set()

    async def _label(
        self, rows: MemoryObjectReceiveStream[Row], results: MemoryObjectSendStream[RowResult]
    ) -> None:
        async with rows, results:
            async for row in rows:
                if self.stopping.is_set():
                    return
                try:
                    result = await self.labeller.label(row)
                except FatalRunError as exc:
                    self.fatal = self.fatal or exc
                    self.stopping.set()
                    self.work.cancel()
                    return
                with anyio.CancelScope(shield=True):  # a finished row is never dropped
                    await results.send(result)

    async def _write(self, results: MemoryObjectReceiveStream[RowResult]) -> None:
        async with results, OutputWriter(self.config.output_path) as writer:
            async for result in results:
                batch = [result]
                while len(batch) < WRITE_BATCH:
                    try:
                        batch.append(results.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                # Shielded: a cancelled run still finishes the write it started.
                with anyio.CancelScope(shield=True):
                    await writer.write([encode_line(r.as_record(self.stamp)) for r in batch])
                for r in batch:
                    self.stats.count(r)

    async def _on_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if self.stopped_by is not None:
                    log.warning("second signal: stopping now")
                    self.work.cancel()
                    return
                self.stopped_by = signal.Signals(signum).name
                self.stopping.set()
                grace = self.config.grace_period
                log.warning(
                    "%s: taking no new rows; in-flight rows get %gs", self.stopped_by, grace
                )
                self.work.deadline = anyio.current_time() + grace


def _duplicate(row: Row) -> BadInput:
    return BadInput(
        f"line {row.line}: id {row.id!r} was already used by an earlier line; ids must be unique"
    )
