"""The run: one task group, one pipeline.

    RowSource ──rows──▶ labellers (2 per slot) ──results──▶ ResultSink (sole owner of the output)

`run_job` only wires the parts together. Both streams are bounded, so memory follows the
concurrency, never the input's size. A fatal error or a signal stops the source and the
labellers; the sink always drains what completed.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from batch.core.chat import Backend
from batch.core.errors import BatchError, FatalRunError, ModelMissing, SettingsChanged
from batch.core.idset import IdSet
from batch.core.images import ImagePolicy
from batch.core.log_events import FIELDS, event
from batch.core.rows import Row, RowDefaults, RowResult
from batch.core.schema import OutputSchema, load_schema
from batch.core.states import StopReason
from batch.core.stats import RunStats
from batch.core.window import ReorderWindow
from batch.labelling.budget import Budget, BudgetReached, Budgets
from batch.labelling.confidence import AskingLogprobs
from batch.labelling.labeller import Labeller, RetryPolicy
from batch.labelling.panel import PanelLabeller
from batch.reuse.cache import AnswerCache
from batch.reuse.dedup import ReusingLabeller
from batch.run.changed import recorded_settings, refusal
from batch.run.config import JobConfig
from batch.run.observing import EXPORT_EVERY_S, Observers, open_observers
from batch.run.panel_run import (
    PanelResume,
    finish_panel,
    panel_labeller,
    panel_plan,
    prepare_panel,
    sample_warnings,
)
from batch.run.plan import make_plan
from batch.run.progress import InputSize, show_progress
from batch.run.summary import RunSummary, build_summary, write_summary
from batch.run.wiring import open_answer_cache, open_label_watch, open_pool, reply_salt, written_by
from batch.serving.pool import HostPool
from batch.sink.changes import finish_output
from batch.sink.label_watch import LabelWatch
from batch.sink.lock import hold_outputs
from batch.sink.output import Opener, drop_if_empty, open_append, prepare_output
from batch.sink.records import RecordCodec
from batch.sink.reorder import sort_by_line
from batch.sink.writer import WRITE_BATCH, Item, ResultSink
from batch.source.builder import RowBuilder
from batch.source.row_source import RowSource

log = logging.getLogger(__name__)

Progress = Callable[[], Coroutine[Any, Any, None]]  # the progress display, ready to start


async def run_job(
    config: JobConfig,
    *,
    backends: Sequence[Backend] | None = None,
    handle_signals: bool = False,
    show: bool = False,
    opener: Opener = open_append,
    budgets: Budgets | None = None,
) -> RunSummary:
    """Run `config` to the end (or to a signal) and write its summary.

    Raises `ConfigError` or `FatalRunError` (after writing the summary) when the run cannot go
    on; a row's failure is an error line in the output, never raised. `backends` serve in place
    of the configured hosts (a test double, `batch.testing.TestBackend`); `handle_signals` and
    `show` are for the CLI; `opener` opens the output files (a test's disk that fills);
    `budgets` replace the configured ones (`plan --sample`). Another live run writing the same
    output is a `ConfigError`, raised before any file is touched.
    """
    config.check_paths()
    with hold_outputs(written_by(config)):
        cache = open_answer_cache(config.reuse.cache)
        try:
            return await _run_job(config, backends, handle_signals, show, cache, opener, budgets)
        finally:
            if cache is not None:
                cache.close()


async def _run_job(
    config: JobConfig,
    backends: Sequence[Backend] | None,
    handle_signals: bool,
    show: bool,
    cache: AnswerCache | None,
    opener: Opener,
    budgets: Budgets | None,
) -> RunSummary:
    stats = RunStats()  # the clock starts here: reading the earlier output is part of the run
    schema = load_schema(config.prompt.schema_ref) if config.prompt.schema_ref else None
    codec = RecordCodec(config.fingerprint(schema), config.files.output_format)
    panel = await prepare_panel(config, codec, panel_plan(config))  # before compaction
    try:
        done = await anyio.to_thread.run_sync(
            partial(prepare_output, config.output_path, codec, overwrite=config.files.overwrite)
        )
    except SettingsChanged as found:
        raise refusal(config, found) from None
    if panel is not None:
        panel.reopen(done)
    done_before = len(done)  # the table fills with this run's ids from here on
    if (errors_file := config.files.errors_file) is not None:
        # It lists the failures of the latest run; a rerun tries them again.
        await anyio.to_thread.run_sync(partial(errors_file.unlink, missing_ok=True))
    budget = Budget(budgets or config.budgets.limits())
    pool = open_pool(config, backends, meter=budget)
    watch = await open_label_watch(config)
    watch.warnings += sample_warnings(config)
    size = InputSize(config.input, config.shard_spec.count if config.shard_spec else 1)
    observers = open_observers(config, stats, pool.hosts, size)
    parts = (pool, watch, cache, opener, budget, observers, size, panel)
    try:
        run = _assemble(config, stats, codec, done, schema, *parts)
    except BaseException:
        observers.close()  # a live /metrics must not outlive a run that never started
        raise
    _log_start(config, pool)
    if config.sharding.shard is not None:
        log.info("shard %s: only the rows whose id hashes to it", config.sharding.shard)
    try:
        progress = _progress(config, stats, pool, run.size) if show else None
        await run.execute(handle_signals=handle_signals, progress=progress)
        if done_before:
            await _finish_rerun(config, codec, done, done_before, run, stats)
        if config.files.ordered and done_before:  # a rerun appended after the rows it kept
            await anyio.to_thread.run_sync(sort_by_line, config.output_path)
        if isinstance(run.labeller, PanelLabeller) and run.fatal is None:
            await finish_panel(config, run.labeller)
    finally:
        await pool.aclose()
        run.labeller.close()
        if run.fatal is not None:
            run.fatal = _explained(config, run, run.fatal)
            await anyio.to_thread.run_sync(drop_if_empty, config.output_path)
        try:
            summary = await _summarize(config, stats, codec, schema, pool, watch, run)
            unwritten = await _write_summary(config.summary_path, summary)
        except BaseException:
            await observers.finish(succeeded=False, status="fatal")
            raise
        # Exit 0 (the CLI's rule): the last success a metrics exporter may stamp.
        succeeded = summary.complete and not summary.rows.error and unwritten is None
        await observers.finish(succeeded=succeeded, status=_status(summary, run))
    return _outcome(summary, run.fatal, unwritten)


async def _summarize(
    config: JobConfig,
    stats: RunStats,
    codec: RecordCodec,
    schema: OutputSchema | None,
    pool: HostPool,
    watch: LabelWatch,
    run: _Run,
) -> RunSummary:
    panel_fields = _panel_fields(run, stats)  # first: it corrects the count of changed rows
    summary = build_summary(
        stats,
        input_path=config.input,
        output_path=config.output_path,
        fingerprint=codec.fingerprint,
        settings=recorded_settings(config, schema),
        hosts=pool.names,
        model=config.prompt.model,
        fatal=str(run.fatal) if run.fatal else None,
        stopped_by=run.stopped_by,
        errors_path=config.files.errors_file,
        host_report=pool.report(),
        shard=config.sharding.shard,
    ).model_copy(update={**watch.summary_fields(), **panel_fields})
    # After the summary's clock stopped: the count of rows left is no part of the run.
    return await _after_budget(
        summary, config, run, row_defaults(config, schema), codec.fingerprint
    )


def _panel_fields(run: _Run, stats: RunStats) -> dict[str, Any]:
    if not isinstance(run.labeller, PanelLabeller):
        return {}
    stats.changed -= run.labeller.completed  # sent again for votes, not a new input
    return {"panel": run.labeller.tally.as_record()}


def _log_start(config: JobConfig, pool: HostPool) -> None:
    model = ",".join(config.members) if config.voting.active else config.prompt.model
    shown = model or "the model each row names"
    started = event("run_started", input=str(config.input), model=model)
    started[FIELDS].update(hosts=pool.names, output=str(config.output_path))
    log.info("labelling %s with %s on %s", config.input, shown, pool.name, extra=started)


def _status(summary: RunSummary, run: _Run) -> str:
    if run.fatal is not None:
        return "fatal"
    if summary.stopped_by is not None:
        return f"stopped: {summary.stopped_by}"
    return "failed rows" if summary.rows.error else "ok"


def _assemble(
    config: JobConfig,
    stats: RunStats,
    codec: RecordCodec,
    done: IdSet,
    schema: OutputSchema | None,
    pool: HostPool,
    watch: LabelWatch,
    cache: AnswerCache | None,
    opener: Opener,
    budget: Budget,
    observers: Observers,
    size: InputSize,
    panel: PanelResume | None = None,
) -> _Run:
    """The source, the labellers and the sink of `config`'s run, sharing one reorder window."""
    window = ReorderWindow[Item]() if config.files.ordered else None
    builder = RowBuilder(row_defaults(config, schema))
    labeller = Labeller(
        AskingLogprobs(pool) if config.quality.asks_logprobs else pool,
        RetryPolicy(
            config.retries.max_attempts, config.retries.backoff, config.retries.backoff_max
        ),
        observers.events,
    )
    reusing = ReusingLabeller(
        labeller, dedup=config.reuse.dedup, cache=cache, salt=reply_salt(config)
    )
    return _Run(
        source=RowSource(
            config.input, builder, done, stats, shard=config.shard_spec, window=window
        ),
        labeller=panel_labeller(config, reusing, panel) if config.voting.active else reusing,
        sink=ResultSink(
            config.output_path,
            codec,
            stats,
            watch,
            errors_file=config.files.errors_file,
            window=window,
            opener=opener,
        ),
        slots=pool.capacity,
        grace_period=config.retries.grace_period,
        window=window,
        budget=budget,
        observers=observers,
        size=size,
    )


def _progress(config: JobConfig, stats: RunStats, pool: HostPool, size: InputSize) -> Progress:
    lines = config.observe.log_format == "json"  # a bar is not a JSON line
    every = config.display.log_every
    return partial(show_progress, stats, size, every, pool.hosts, lines)


def _explained(config: JobConfig, run: _Run, fatal: BatchError) -> BatchError:
    """A model missing that the input's OpenAI requests name: their model names are OpenAI's,
    so the way on is --model, not `ollama pull`."""
    if isinstance(fatal, ModelMissing) and not config.prompt.model and run.source.openai_requests:
        return FatalRunError(
            f"model {fatal.model!r}, named by the input's OpenAI requests, is not available on "
            f"{fatal.host}: OpenAI model names need --model to pick an Ollama model "
            "(`ollama list` on the host shows the ones it has)"
        )
    return fatal


def _outcome(summary: RunSummary, fatal: BatchError | None, unwritten: str | None) -> RunSummary:
    """The summary; else the run's fatal error, saying too that the summary was not written."""
    if fatal is not None:
        raise FatalRunError(f"{fatal}. {unwritten}") if unwritten else fatal
    if unwritten:
        raise FatalRunError(f"every row was written, but {unwritten}")
    return summary


async def _write_summary(path: Path, summary: RunSummary) -> str | None:
    """Writes the summary; None, or why it could not be (the disk that stopped the run)."""
    try:
        await anyio.to_thread.run_sync(write_summary, path, summary)
    except OSError as exc:
        return f"the summary could not be written to {path}: {exc.strerror or exc}"
    return None


async def _finish_rerun(
    config: JobConfig,
    codec: RecordCodec,
    done: IdSet,
    done_before: int,
    run: _Run,
    stats: RunStats,
) -> None:
    """Counts the rows no longer in the input; takes out the old lines of the changed rows
    labelled again (and, with --prune, the rows no longer in the input)."""
    source, changes = run.source, run.sink.changes
    prune = config.files.prune and source.read_all
    if source.read_all:  # each done id met in the input was skipped or found changed
        stats.not_in_input = done_before - stats.skipped - source.changed_met
    if len(changes) or (prune and stats.not_in_input):
        stats.pruned = await anyio.to_thread.run_sync(
            partial(finish_output, config.output_path, codec, done, changes, prune=prune)
        )


async def _after_budget(
    summary: RunSummary, config: JobConfig, run: _Run, defaults: RowDefaults, fingerprint: str
) -> RunSummary:
    """After a budget stop: `rows.total` counts the whole input, the rows this run never reached
    too, and `left` says what the next run labels and what is left of each budget."""
    if run.stopped_by is None or not run.stopped_by.is_budget:
        return summary
    rest = await make_plan(config, defaults, fingerprint)
    return summary.model_copy(
        update={
            "rows": summary.rows.model_copy(update={"total": rest.rows_in_input}),
            "left": {"rows": rest.rows_to_label, **run.budget.left()},
        }
    )


def row_defaults(config: JobConfig, schema: OutputSchema | None) -> RowDefaults:
    return RowDefaults(
        # A panel's rows are built for its first member; each member's request names its own.
        model=config.members[0] if config.voting.active else config.prompt.model,
        options=config.prompt.options,
        template=config.prompt.template,
        system=config.prompt.system,
        schema=schema,
        images=ImagePolicy(config.input.parent, config.files.allow_outside_images),
    )


@dataclass
class _Run:
    """The task group: the source, the labellers and the sink, and what stops them."""

    source: RowSource
    labeller: ReusingLabeller | PanelLabeller
    sink: ResultSink
    slots: int
    grace_period: float
    size: InputSize  # counted while the run lasts, when something shows it
    window: ReorderWindow[Item] | None = None
    stopping: anyio.Event = field(default_factory=anyio.Event)
    work: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    fatal: BatchError | None = None
    stopped_by: StopReason | None = None
    budget: Budget = field(default_factory=lambda: Budget(Budgets()))
    observers: Observers = field(default_factory=Observers)

    def stop(self) -> None:
        """Take no new rows."""
        self.stopping.set()
        if self.window is not None:
            self.window.close()

    def stop_at_budget(self) -> None:
        """A budget is met: no new row. Rows under way finish, their requests bounded by
        --timeout and the send gate: they are paid for. Only a deadline cuts them, at the
        deadline plus the grace period."""
        if self.stopped_by is None:
            self.stopped_by = self.budget.met
            self._say_stopped()
            if (to_deadline := self.budget.seconds_to_deadline()) is not None:
                to_deadline = max(to_deadline, 0.0)
                self.work.deadline = anyio.current_time() + to_deadline + self.grace_period
        self.stop()

    def _say_stopped(self) -> None:
        """Which budget was met, by the flag that set it, and what happens to rows under way."""
        assert self.stopped_by is not None
        budgets, grace = self.budget.budgets, self.grace_period
        named = budgets.named(self.stopped_by)
        stop = event("budget_stop", budget=named)
        if self.stopped_by == StopReason.DEADLINE:
            message = "%s is near: taking no new rows; rows under way get %gs more"
            log.warning(message, named, grace, extra=stop)
            return
        by = ""
        if budgets.deadline is not None:
            by = f" (by {budgets.named(StopReason.DEADLINE)} and {grace:g}s past it)"
        if self.stopped_by == StopReason.MAX_ROWS:  # `plan --sample N`: it waits, as it should
            log.info("%s: waiting for the sample's rows to finish%s", named, by, extra=stop)
        else:
            message = "%s is met: taking no new rows; rows under way finish%s"
            log.warning(message, named, by, extra=stop)

    async def execute(self, *, handle_signals: bool, progress: Progress | None) -> None:
        # Twice the slots: while some rows sleep before a retry, others keep every slot busy.
        labellers = 2 * self.slots
        rows_send, rows_receive = anyio.create_memory_object_stream[Row](labellers)
        # Room for a flush interval's rows, so that labellers never wait for the sink.
        results_send, results_receive = anyio.create_memory_object_stream[RowResult](
            max(labellers, WRITE_BATCH)
        )
        async with anyio.create_task_group() as outer:
            outer.start_soon(self._write, results_receive)
            watchers = anyio.CancelScope()
            outer.start_soon(self._watch, watchers, handle_signals, progress)
            with self.work:
                async with results_send, rows_receive, anyio.create_task_group() as work:
                    work.start_soon(self._read, rows_send)
                    for _ in range(labellers):
                        work.start_soon(self._label, rows_receive.clone(), results_send.clone())
            watchers.cancel()

    async def _watch(
        self, scope: anyio.CancelScope, handle_signals: bool, progress: Progress | None
    ) -> None:
        with scope:
            async with anyio.create_task_group() as tg:
                if handle_signals:
                    tg.start_soon(self._on_signals)
                if (seconds := self.budget.seconds_to_deadline()) is not None:
                    tg.start_soon(self._at_deadline, seconds)
                if progress is not None:
                    tg.start_soon(self._show, progress)
                if progress is not None or self.observers.rows_left is not None:
                    tg.start_soon(self.size.count)  # once, for both
                tg.start_soon(self.observers.every_while, EXPORT_EVERY_S)

    async def _show(self, progress: Progress) -> None:
        try:
            await progress()
        except Exception as exc:  # a display that fails must not stop the run
            log.warning("progress display stopped: %s: %s", type(exc).__name__, exc)

    def _fail(self, exc: Exception, task: str, *, cancel: bool = True) -> None:
        """Any task's failure ends as one fatal error for run_job to raise, never as an
        exception group; `cancel`: stop in-flight rows too, not only the taking of new ones."""
        if not isinstance(exc, BatchError):
            log.debug("unexpected error in the %s", task, exc_info=exc)
            exc = FatalRunError(
                f"unexpected error in the {task}: {type(exc).__name__}: {exc} "
                "(a bug: run with -v for the traceback)"
            )
        self.fatal = self.fatal or exc
        self.stop()
        if cancel:
            self.work.cancel()

    async def _write(self, results: MemoryObjectReceiveStream[RowResult]) -> None:
        try:
            await self.sink.drain(results)
        except Exception as exc:  # a full disk: nothing more can be written
            self._fail(exc, "writer")

    async def _read(self, send: MemoryObjectSendStream[Row]) -> None:
        try:
            await self.source.feed(send, self.stopping)
        except anyio.BrokenResourceError:
            pass  # every labeller has stopped (a signal): nothing left to feed
        except OSError as exc:  # rows read so far still finish
            reason = FatalRunError(f"cannot read the input: {exc}")
            self._fail(reason, "reader", cancel=False)
        except Exception as exc:  # e.g. a row with no model and no --model
            self._fail(exc, "reader", cancel=False)

    async def _label(
        self, rows: MemoryObjectReceiveStream[Row], results: MemoryObjectSendStream[RowResult]
    ) -> None:
        async with rows, results:
            async for row in rows:
                if self.stopping.is_set():
                    return
                if not self.budget.row_may_start():
                    self.stop_at_budget()
                    return
                try:
                    result = await self.labeller.label(row)
                except BudgetReached:  # at the send gate: the row is left for the next run
                    self.stop_at_budget()
                    return
                except Exception as exc:  # FatalRunError; a row's own trouble is its result
                    self._fail(exc, "labeller")
                    return
                self.budget.row_ended(result.elapsed_s, result.usage)
                try:
                    await _hand_over(results, result)
                except anyio.BrokenResourceError:
                    return  # the writer stopped (a full disk): it reported why

    async def _at_deadline(self, seconds: float) -> None:
        await anyio.sleep(max(seconds, 0.0))
        self.budget.deadline_reached()
        self.stop_at_budget()

    async def _on_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if self.stopped_by is not None:  # a second signal, or one at a budget's stop
                    log.warning("%s: stopping the rows under way now", signal.Signals(signum).name)
                    self.work.cancel()
                    return
                self.stopped_by = StopReason.of_signal(signum)
                self.stop()
                log.warning(
                    "%s: taking no new rows; in-flight rows get %gs",
                    self.stopped_by,
                    self.grace_period,
                )
                self.work.deadline = anyio.current_time() + self.grace_period


async def _hand_over(results: MemoryObjectSendStream[RowResult], result: RowResult) -> None:
    """A finished row to the writer, never dropped: at once when there is room (no wait, so
    nothing to cancel, and no cancel scope to pay for on every row), else shielded."""
    try:
        results.send_nowait(result)
    except anyio.WouldBlock:
        with anyio.CancelScope(shield=True):
            await results.send(result)
