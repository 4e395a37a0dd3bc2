"""The run: one task group, one pipeline.

    reader ──rows──▶ N labellers ──results──▶ writer (sole owner of the output file)

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
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio import CancelScope
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from batch.backends.base import Backend
from batch.backends.ollama import OllamaBackend, display_host
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


@dataclass
class _Stop:
    """Why the run ended early, if it did."""

    fatal: BatchError | None = None
    signal: str | None = None


def fingerprint(config: JobConfig, schema: OutputSchema | None) -> str:
    """Names the settings that shape a label; rows from different settings never mix."""
    shaping = {
        "model": config.model,
        "schema": schema.json_schema if schema else None,
        "template": config.template,
        "system": config.system,
        "options": config.options,
    }
    canonical = json.dumps(shaping, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


async def run_job(
    config: JobConfig,
    *,
    backends: Sequence[Backend] | None = None,
    handle_signals: bool = False,
    show: bool = False,
) -> RunSummary:
    """Run `config` to the end (or to a signal). Raises `ConfigError`/`FatalRunError` after
    writing the summary; row failures are in the output, never raised."""
    if not config.input.is_file():
        raise ConfigError(f"input file {config.input} does not exist")
    if config.output_path.resolve() == config.input.resolve():
        raise ConfigError(f"the output would overwrite the input {config.input}: change --output")
    schema = load_schema(config.schema_ref) if config.schema_ref else None
    stamp = fingerprint(config, schema)
    output_path = config.output_path
    done = await anyio.to_thread.run_sync(
        lambda: prepare_output(output_path, stamp, overwrite=config.overwrite)
    )
    if backends is None:
        backends = [
            OllamaBackend(host, concurrency=config.concurrency, timeout=config.timeout)
            for host in config.hosts
        ]
    pool = HostPool(backends, config.concurrency)
    policy = RetryPolicy(config.max_attempts, config.backoff, config.backoff_max)
    labeller = Labeller(pool, policy, schema)
    builder = RowBuilder(
        model=config.model,
        options=config.options,
        template=config.template,
        system=config.system,
        format=schema.json_schema if schema else None,
    )
    stats = RunStats()
    stop = _Stop()
    log.info("labelling %s with %s on %s", config.input, config.model, ", ".join(pool.names))
    try:
        await _pipeline(config, builder, labeller, done, stats, stop, stamp, handle_signals, show)
    finally:
        await pool.aclose()
        summary = build_summary(
            stats,
            input_path=config.input,
            output_path=output_path,
            fingerprint=stamp,
            hosts=[display_host(h) for h in config.hosts] if backends is None else pool.names,
            model=config.model,
            fatal=str(stop.fatal) if stop.fatal else None,
            stopped_by=stop.signal,
        )
        await anyio.to_thread.run_sync(write_summary, config.summary_path, summary)
    if stop.fatal is not None:
        raise stop.fatal
    return summary


async def _pipeline(
    config: JobConfig,
    builder: RowBuilder,
    labeller: Labeller,
    done: IdSet,
    stats: RunStats,
    stop: _Stop,
    stamp: str,
    handle_signals: bool,
    show: bool,
) -> None:
    workers = labeller_count(config, len(config.hosts))
    rows_send, rows_receive = anyio.create_memory_object_stream[Row](workers)
    results_send, results_receive = anyio.create_memory_object_stream[RowResult](workers * 2)
    stopping = anyio.Event()

    async with anyio.create_task_group() as outer:
        outer.start_soon(_write, config.output_path, results_receive, stats, stamp)
        watchers = anyio.CancelScope()
        async with results_send, anyio.create_task_group() as work:

            async def watch() -> None:
                with watchers:
                    async with anyio.create_task_group() as tg:
                        if handle_signals:
                            tg.start_soon(_on_signal, stop, stopping, work.cancel_scope, config)
                        if show:
                            tg.start_soon(show_progress_quietly, stats, config)

            outer.start_soon(watch)
            work.start_soon(_read, config.input, builder, done, rows_send, stats, stop, stopping)
            async with rows_receive:
                for _ in range(workers):
                    work.start_soon(
                        _label_rows,
                        labeller,
                        rows_receive.clone(),
                        results_send.clone(),
                        stop,
                        stopping,
                        work.cancel_scope,
                    )
        watchers.cancel()


def labeller_count(config: JobConfig, hosts: int) -> int:
    # Twice the slots: while some rows sleep before a retry, others keep every slot busy.
    return 2 * config.concurrency * hosts


async def show_progress_quietly(stats: RunStats, config: JobConfig) -> None:
    await show_progress(stats, config.input, log_every=config.log_every)


async def _read(
    path: Path,
    builder: RowBuilder,
    done: IdSet,
    send: MemoryObjectSendStream[Row],
    stats: RunStats,
    stop: _Stop,
    stopping: anyio.Event,
) -> None:
    seen = IdSet(len(done))
    async with send:
        try:
            async with aclosing(read_lines(path)) as lines:
                async for number, raw in lines:
                    if stopping.is_set():
                        return
                    row = builder.build(number, raw)
                    if row.has_id:
                        key = id_key(row.id)
                        if not seen.add(key):
                            row.request, row.failure = None, _duplicate(row)
                        elif key in done:
                            stats.skipped += 1
                            continue
                    await send.send(row)
        except anyio.BrokenResourceError:
            pass  # every labeller has stopped (a signal): nothing left to feed
        except BatchError as exc:  # e.g. a row with no model and no --model
            stop.fatal = exc
            stopping.set()


def _duplicate(row: Row) -> BadInput:
    return BadInput(
        f"line {row.line}: id {row.id!r} was already used by an earlier line; ids must be unique"
    )


async def _label_rows(
    labeller: Labeller,
    rows: MemoryObjectReceiveStream[Row],
    results: MemoryObjectSendStream[RowResult],
    stop: _Stop,
    stopping: anyio.Event,
    work: CancelScope,
) -> None:
    async with rows, results:
        async for row in rows:
            if stopping.is_set():
                return
            try:
                result = await labeller.label(row)
            except FatalRunError as exc:
                if stop.fatal is None:
                    stop.fatal = exc
                stopping.set()
                work.cancel()
                return
            with anyio.CancelScope(shield=True):  # a finished row is never dropped
                await results.send(result)


async def _write(
    path: Path, results: MemoryObjectReceiveStream[RowResult], stats: RunStats, stamp: str
) -> None:
    async with results, OutputWriter(path) as writer:
        async for result in results:
            batch = [result]
            while len(batch) < WRITE_BATCH:
                try:
                    batch.append(results.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
            # Shielded: a cancelled run still finishes the write it started.
            with anyio.CancelScope(shield=True):
                await writer.write([encode_line(r.as_record(stamp)) for r in batch])
            for r in batch:
                stats.count(r)


async def _on_signal(
    stop: _Stop, stopping: anyio.Event, work: CancelScope, config: JobConfig
) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if stopping.is_set() and stop.signal is not None:
                log.warning("second signal: stopping now")
                work.cancel()
                return
            stop.signal = signal.Signals(signum).name
            stopping.set()
            log.warning(
                "%s: taking no new rows; in-flight rows get %.0fs to finish",
                stop.signal,
                config.grace_period,
            )
            work.deadline = anyio.current_time() + config.grace_period
