"""Every run shows its labels: the count of each categorical field's values over the ok rows,
and a warning when one value takes nearly every row (the model may not be reading the input).

`LabelWatch` sees each finished row as the sink writes it: it sets the row's confidence (with
`--logprobs`), counts its labels, and picks the rows a person should check (`--review-below`).
Counting is a dictionary walk and a counter increment a field: the overhead benchmark cannot
see it.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path as FilePath
from types import TracebackType
from typing import Any

import anyio

from batch.core.categories import Allowed, Path, categorical_fields, dotted, value_at, value_key
from batch.core.rows import RowResult
from batch.core.schema import OutputSchema
from batch.labelling.confidence import field_confidence
from batch.sink.review import ReviewFile

log = logging.getLogger(__name__)

DEGENERATE_SHARE = 0.95  # one value on this share of the rows, or more ...
DEGENERATE_ROWS = 20  # ... of at least this many: warn
SCHEMAS_KEPT = 64  # rows may bring their own schemas (OpenAI files); a file repeats a few


class LabelCounts:
    """Counts of each categorical field's values, allowed ones first (0 when never given)."""

    def __init__(self) -> None:
        self._counts: dict[Path, Counter[str]] = {}
        self._allowed: dict[Path, Allowed] = {}
        self._schemas: dict[int, tuple[OutputSchema, dict[Path, Allowed]]] = {}

    def fields_of(self, schema: OutputSchema) -> dict[Path, Allowed]:
        known = self._schemas.get(id(schema))
        if known is not None:
            return known[1]
        fields = categorical_fields(schema.json_schema)
        if len(self._schemas) >= SCHEMAS_KEPT:
            self._schemas.clear()
        self._schemas[id(schema)] = (schema, fields)  # the schema kept, so its id stays its own
        for path, allowed in fields.items():
            if path not in self._counts:
                self._counts[path] = Counter({value_key(v): 0 for v in allowed})
                self._allowed[path] = allowed
        return fields

    def count(self, output: Any, fields: dict[Path, Allowed]) -> None:
        for path in fields:
            found, value = value_at(output, path)
            if found and isinstance(value, str | int | float | bool | None):
                self._counts[path][value_key(value)] += 1

    def as_record(self) -> dict[str, dict[str, int]]:
        return {dotted(path): dict(counts) for path, counts in self._counts.items()}

    def warnings(self) -> list[str]:
        found = []
        for path, counts in self._counts.items():
            rows = sum(counts.values())
            top, n = max(counts.items(), key=lambda item: item[1], default=("", 0))
            others = [v for v in self._allowed[path] if value_key(v) != top]
            if rows >= DEGENERATE_ROWS and n >= DEGENERATE_SHARE * rows and others:
                found.append(
                    f"{dotted(path)}: {top!r} on {n} of {rows} ok rows ({n / rows:.0%}), though "
                    f"{len(others)} other value{'s are' if len(others) > 1 else ' is'} allowed: "
                    "the model may be answering without reading the input"
                )
        return found


class LabelWatch:
    """What the sink asks of each finished row, beyond writing it. An async context manager:
    it owns the review file."""

    def __init__(
        self, *, logprobs: bool, review_below: float | None, review_file: FilePath | None
    ) -> None:
        self.labels = LabelCounts()
        self._logprobs = logprobs
        self._review = (
            ReviewFile(review_file, review_below)
            if review_below is not None and review_file is not None
            else None
        )
        self.with_confidence = 0
        self.without_confidence = 0
        self.warnings: list[str] = []
        self._pending: list[RowResult] = []
        self._told_no_logprobs = False

    async def __aenter__(self) -> LabelWatch:
        if self._review is not None:
            await self._review.__aenter__()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._review is not None:
            await self._review.__aexit__(kind, exc, tb)

    def observe(self, result: RowResult) -> None:
        """A finished row, before its line is encoded: its confidence set, its labels counted."""
        schema = result.row.schema
        if result.failure is not None or schema is None:
            return
        fields = self.labels.fields_of(schema)
        self.labels.count(result.output, fields)
        if not (self._logprobs and fields):
            return
        if result.votes is not None:
            pass  # a panel's row: its confidence is the vote's (labelling/panel.py)
        elif result.logprobs is None:
            self._no_logprobs(result.host)
        elif result.content is not None:
            result.confidence = field_confidence(result.content, result.logprobs, fields)
        if result.confidence:
            self.with_confidence += 1
            if self._review is not None and self._review.wants(result):
                self._pending.append(result)
        else:
            self.without_confidence += 1

    async def flush(self) -> None:
        """Writes the rows for review seen since the last flush (after their output lines)."""
        if self._review is not None and self._pending:
            pending, self._pending = self._pending, []
            with anyio.CancelScope(shield=True):  # as the output's: a started write finishes
                await self._review.write(pending)

    def _no_logprobs(self, host: str | None) -> None:
        """One warning a run, however many rows come back without them."""
        if not self._told_no_logprobs:
            self._told_no_logprobs = True
            message = (
                f"{host or 'the server'} returned no token log-probabilities (Ollama returns "
                "them from 0.12.11 on): rows without them are written without confidence"
            )
            log.warning("%s", message)
            self.warnings.append(message)

    def summary_fields(self) -> dict[str, Any]:
        """The summary's `labels`, `confidence`, `review` and `warnings`; warnings logged."""
        degenerate = self.labels.warnings()
        for message in degenerate:
            log.warning("%s", message)
        labels = self.labels.as_record()
        fields: dict[str, Any] = {
            "labels": labels or None,
            "warnings": [*self.warnings, *degenerate],
        }
        if self._logprobs:
            fields["confidence"] = {
                "rows": self.with_confidence,
                "without": self.without_confidence,
            }
        if self._review is not None:
            fields["review"] = self._review.as_record()
        return fields


SHOWN_VALUES = 8  # a field's most frequent values printed at the end of a run; the rest summed


def label_lines(
    labels: dict[str, dict[str, int]] | None, review: dict[str, Any] | None, done_before: int = 0
) -> list[str]:
    """The end-of-run lines: one a categorical field, most frequent value first. They count
    this run's rows: a resumed run's earlier rows are in the output, not read back for this."""
    lines = []
    for field, counts in (labels or {}).items():
        rows = f"{sum(counts.values())} rows"
        if done_before:
            rows = f"this run's {rows}; the {done_before} done before are not counted"
        ranked = sorted(counts.items(), key=lambda item: -item[1])
        shown = ", ".join(f"{value} {n}" for value, n in ranked[:SHOWN_VALUES])
        if rest := ranked[SHOWN_VALUES:]:
            shown += f", {len(rest)} more values {sum(n for _, n in rest)}"
        lines.append(f"labels {field} ({rows}): {shown}")
    if review is not None:
        lines.append(
            f"review: {review['rows']} rows with a label below confidence {review['below']:g} "
            f"in {review['file']}"
        )
    return lines
