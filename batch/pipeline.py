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
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from batch.backends.base import Backend
from batch.backends.select import host_concurrency, open_backends
from batch.config import JobConfig
from batch.errors import BadInput, BatchError, ConfigError, FatalRunError
from batch.formats.openai_out import openai_record
from batch.hosts import Host, HostPolicy
from batch.idset import IdSet, Sighting
from batch.images import ImagePolicy
from batch.label import Labeller, RetryPolicy, RowResult
from batch.output import OutputWriter, encode_line, prepare_output
from batch.pool import HostPool
from batch.progress import show_progress
from batch.reader import LineCountGuess, read_lines
from batch.reorder import ReorderWindow, sort_by_line
from batch.rows import Row, RowBuilder, id_key
from batch.schema import OutputSchema, load_schema
from batch.summary import RunStats, RunSummary, build_summary, write_summary

log = logging.getLogger(__name__)

# Finished rows gather for up to FLUSH_EVERY seconds (at most WRITE_BATCH of them) and go to
# disk in one write: one thread hop per batch instead of one per row. A kill loses at most
# those, and they run again on resume.
WRITE_BATCH = 256
FLUSH_EVERY = 0.05


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
    if config.errors_file and config.errors_file.resolve() in (
        config.input.resolve(),
        config.output_path.resolve(),
    ):
        raise ConfigError(f"--errors-file {config.errors_file} must differ from input and output")
    stats = RunStats()  # the clock starts here: reading the earlier output is part of the run
    schema = load_schema(config.schema_ref) if config.schema_ref else None
    stamp = fingerprint(config, schema)
    done = await anyio.to_thread.run_sync(
        lambda: prepare_output(
            config.output_path,
            stamp,
            overwrite=config.overwrite,
            output_format=config.output_format,
        )
    )
    resumed = len(done) > 0  # the table fills with this run's ids from here on
    if (errors_file := config.errors_file) is not None:
        # It lists the failures of the latest run; a rerun tries them again.
        await anyio.to_thread.run_sync(partial(errors_file.unlink, missing_ok=True))
    concurrency = host_concurrency(config)
    if backends is None:
        backends = open_backends(config)
    elif len(backends) != len(concurrency):  # backends given in place of the configured hosts
        concurrency = [config.concurrency] * len(backends)
    host_policy = HostPolicy(config.max_attempts, config.backoff, config.backoff_max)
    pool = HostPool(backends, concurrency, host_policy)
    builder = RowBuilder(
        model=config.model,
        options=config.options,
        template=config.template,
        system=config.system,
        format=schema.json_schema if schema else None,
        images=ImagePolicy(config.input.parent, config.allow_outside_images),
    )
    policy = RetryPolicy(config.max_attempts, config.backoff, config.backoff_max)
    run = _Run(config, builder, Labeller(pool, policy, schema), done, stamp, pool.capacity, stats)
    run.hosts = pool.hosts
    log.info("labelling %s with %s on %s", config.input, config.model, ", ".join(pool.names))
    if config.shard is not None:
        log.info("shard %s: only the rows whose id hashes to it", config.shard)
    try:
        await run.execute(handle_signals=handle_signals, show=show)
        if config.ordered and resumed:  # a rerun appended after the rows it kept
            await anyio.to_thread.run_sync(sort_by_line, config.output_path)
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
            errors_path=config.errors_file,
            host_report=pool.report(),
            shard=config.shard,
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
    ids: IdSet  # ids done in the output before the run, then every id the reader meets
    stamp: str
    slots: int
    stats: RunStats
    stopping: anyio.Event = field(default_factory=anyio.Event)
    work: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    fatal: BatchError | None = None
    stopped_by: str | None = None
    window: ReorderWindow[tuple[bytes, bool]] | None = None  # with --ordered
    hosts: list[Host] = field(default_factory=list)  # for the progress display

    def __post_init__(self) -> None:
        if self.config.ordered:
            self.window = ReorderWindow[tuple[bytes, bool]]()

    def stop(self) -> None:
        """Take no new rows."""
        self.stopping.set()
        if self.window is not None:
            self.window.close()

    def encode(self, result: RowResult) -> bytes:
        if self.config.output_format == "openai":
            return encode_line(openai_record(result, self.stamp))
        return encode_line(result.as_record(self.stamp))

    async def execute(self, *, handle_signals: bool, show: bool) -> None:
        # Twice the slots: while some rows sleep before a retry, others keep every slot busy.
        labellers = 2 * self.slots
        rows_send, rows_receive = anyio.create_memory_object_stream[Row](labellers)
        # Room for a flush interval's rows, so that labellers never wait for the writer.
        results_send, results_receive = anyio.create_memory_object_stream[RowResult](
            max(labellers, WRITE_BATCH)
        )
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
                        show_progress,
                        self.stats,
                        self.config.input,
                        self.config.log_every,
                        self.hosts,
                        self.config.shard_spec.count if self.config.shard_spec else 1,
                    )

    async def _read(self, send: MemoryObjectSendStream[Row]) -> None:
        resuming = len(self.ids) > 0
        shard = self.config.shard_spec
        sizer = LineCountGuess(self.config.input)
        seq = 0
        async with send:
            try:
                async with aclosing(read_lines(self.config.input)) as lines:
                    async for number, raw in lines:
                        if self.stopping.is_set():
                            return
                        if sizer.pending and (guess := sizer.after(raw)):
                            # A shard meets only its share of the ids.
                            self.ids.reserve(guess // shard.count if shard else guess)
                        given = None
                        if shard is not None or resuming:
                            given = self.builder.peek_id(number, raw)
                        if shard is not None and not shard.holds_line(number, given):
                            continue  # another shard's row: not read further, not counted
                        sighting = None
                        if resuming and given is not None:
                            sighting = self.ids.sight(id_key(given))
                            if sighting is Sighting.DONE:
                                self.stats.skipped += 1
                                continue
                        row = self.builder.build(number, raw)
                        if row.has_id:
                            sighting = sighting or self.ids.sight(id_key(row.id))
                            if sighting is Sighting.REPEAT:
                                row.request, row.failure = None, _duplicate(row)
                        row.seq, seq = seq, seq + 1
                        if self.window is not None:
                            await self.window.admit(row.seq)
                            if self.stopping.is_set():
                                return
                        await send.send(row)
            except anyio.BrokenResourceError:
                pass  # every labeller has stopped (a signal): nothing left to feed
            except BatchError as exc:  # e.g. a row with no model and no --model
                self.fatal = exc
                self.stop()

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
                    self.stop()
                    self.work.cancel()
                    return
                with anyio.CancelScope(shield=True):  # a finished row is never dropped
                    await results.send(result)

    async def _write(self, results: MemoryObjectReceiveStream[RowResult]) -> None:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(results)
            output = await stack.enter_async_context(OutputWriter(self.config.output_path))
            errors = output
            if self.config.errors_file is not None:
                errors_writer = OutputWriter(self.config.errors_file, lazy=True)
                errors = await stack.enter_async_context(errors_writer)
            flushed = -FLUSH_EVERY
            async for result in results:
                if (wait := flushed + FLUSH_EVERY - anyio.current_time()) > 0:
                    await anyio.sleep(wait)  # rows come fast: let the next ones gather
                batch = [result]
                while len(batch) < WRITE_BATCH:
                    try:
                        batch.append(results.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                items = [(self.encode(r), r.failure is not None) for r in batch]
                if self.window is not None:
                    items = [
                        due
                        for r, item in zip(batch, items, strict=True)
                        for due in self.window.put(r.row.seq, item)
                    ]
                await _emit(output, errors, items)
                for r in batch:
                    self.stats.count(r)
                flushed = anyio.current_time()
            if self.window is not None:  # rows after one a stopped run never finished
                await _emit(output, errors, self.window.rest())

    async def _on_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if self.stopped_by is not None:
                    log.warning("second signal: stopping now")
                    self.work.cancel()
                    return
                self.stopped_by = signal.Signals(signum).name
                self.stop()
                grace = self.config.grace_period
                log.warning(
                    "%s: taking no new rows; in-flight rows get %gs", self.stopped_by, grace
                )
                self.work.deadline = anyio.current_time() + grace


async def _emit(
    output: OutputWriter, errors: OutputWriter, items: list[tuple[bytes, bool]]
) -> None:
    """Write (line, failed) items: failed ones to `errors` when that is a file of its own."""
    # Shielded: a cancelled run still finishes the write it started.
    with anyio.CancelScope(shield=True):
        if errors is output:
            await output.write([line for line, _ in items])
        else:
            await output.write([line for line, failed in items if not failed])
            await errors.write([line for line, failed in items if failed])


def _duplicate(row: Row) -> BadInput:
    return BadInput(
        f"line {row.line}: id {row.id!r} was already used by an earlier line; ids must be unique"
    )
