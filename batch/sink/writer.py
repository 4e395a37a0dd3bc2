"""The sink: finished rows -> output lines, the only writer of the output (and errors) file.

Rows that finish close together are written together: one write a batch instead of a thread
hop a row. With `--ordered`, lines wait in the reorder window until the rows before them are
written. Every row written is counted in the run's stats, so the summary matches the file.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from batch.core.errors import FatalRunError
from batch.core.log_events import event, events_log
from batch.core.rows import RowResult, id_key
from batch.core.stats import RunStats
from batch.core.window import ReorderWindow
from batch.sink.changes import Changes
from batch.sink.label_watch import LabelWatch
from batch.sink.output import Opener, OutputWriter, WriteFailed, open_append
from batch.sink.records import RecordCodec

# Finished rows gather for up to FLUSH_EVERY seconds (at most WRITE_BATCH of them) and go to
# disk in one write. A kill loses at most those, and they run again on resume.
WRITE_BATCH = 256
FLUSH_EVERY = 0.05

Item = tuple[bytes, bool]  # an output line, and whether its row failed


class ResultSink:
    def __init__(
        self,
        output: Path,
        codec: RecordCodec,
        stats: RunStats,
        watch: LabelWatch | None = None,
        *,
        errors_file: Path | None = None,
        window: ReorderWindow[Item] | None = None,
        opener: Opener = open_append,
    ) -> None:
        self._codec = codec
        self._stats = stats
        self._window = window
        self._watch = watch or LabelWatch(logprobs=False, review_below=None, review_file=None)
        self._output = OutputWriter(output, opener=opener)
        self.changes = Changes()  # rows written this run whose line replaces an older one
        self._errors = self._output
        if errors_file is not None:
            self._errors = OutputWriter(errors_file, lazy=True, opener=opener)

    async def drain(self, results: MemoryObjectReceiveStream[RowResult]) -> None:
        """Write every result that arrives, until the stream ends. Raises `FatalRunError` when
        a file cannot be written (a full disk, a read-only folder): nothing more could be."""
        try:
            await self._drain(results)
        except WriteFailed as failed:
            kept = self._output.lines + (
                self._errors.lines if self._errors is not self._output else 0
            )
            raise FatalRunError(
                f"{failed}. The run stopped; the {kept} rows it wrote are kept (and any done "
                "before); a line cut short is dropped on the next run. Free space or fix the "
                "folder, then rerun the same command to label the rest"
            ) from None

    async def _drain(self, results: MemoryObjectReceiveStream[RowResult]) -> None:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(results)
            output = await stack.enter_async_context(self._output)
            errors = output
            if self._errors is not self._output:
                errors = await stack.enter_async_context(self._errors)
            await stack.enter_async_context(self._watch)
            flushed = -FLUSH_EVERY
            async for result in results:
                if (wait := flushed + FLUSH_EVERY - anyio.current_time()) > 0:
                    await anyio.sleep(wait)  # rows come fast: let the next ones gather
                batch = [result, *_ready(results, WRITE_BATCH - 1)]
                for done in batch:
                    self._watch.observe(done)  # sets its confidence, before it is encoded
                await _emit(output, errors, self._due(batch))
                await self._watch.flush()
                for done in batch:
                    self._stats.count(done)
                    if done.row.replaces:
                        self.changes.mark(id_key(done.row.id))
                    if done.failure is not None:
                        _row_failed(done)
                flushed = anyio.current_time()
            if self._window is not None:  # rows after one a stopped run never finished
                await _emit(output, errors, self._window.rest())

    def _due(self, batch: list[RowResult]) -> list[Item]:
        items = [(self._codec.encode(r), r.failure is not None) for r in batch]
        if self._window is None:
            return items
        return [
            due
            for r, item in zip(batch, items, strict=True)
            for due in self._window.put(r.row.seq, item)
        ]


def _ready(results: MemoryObjectReceiveStream[RowResult], limit: int) -> list[RowResult]:
    ready: list[RowResult] = []
    while len(ready) < limit:
        try:
            ready.append(results.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream):
            break
    return ready


async def _emit(output: OutputWriter, errors: OutputWriter, items: list[Item]) -> None:
    """Write (line, failed) items: failed ones to `errors` when that is a file of its own."""
    # Shielded: a cancelled run still finishes the write it started.
    with anyio.CancelScope(shield=True):
        if errors is output:
            await output.write([line for line, _ in items])
        else:
            await output.write([line for line, failed in items if not failed])
            await errors.write([line for line, failed in items if failed])


def _row_failed(result: RowResult) -> None:
    """An event for the JSON log (the human log leaves `batch.events` quiet)."""
    failure = result.failure
    assert failure is not None
    cause = getattr(failure, "cause", None) or failure.kind
    fields = {"id": result.row.id, "line": result.row.line, "cause": str(cause)}
    fields["attempts"] = result.attempts
    events_log.warning(
        "line %d failed: %s", result.row.line, cause, extra=event("row_failed", **fields)
    )
