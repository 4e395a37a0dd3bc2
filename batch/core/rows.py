"""What flows through a run: the run's defaults, a row built from one input line, its result.

Types only: the builders (`batch.source.builder`, `native_in`, `openai_in`) make rows, the
labeller makes results, and the sink writes them (`batch.sink.records`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batch.core.chat import ChatRequest, Format, TokenLogprob, Usage
from batch.core.errors import BadInput, Cause, RowFailure
from batch.core.images import ImagePolicy
from batch.core.schema import OutputSchema


class LineId(int):
    """The id of a row that gives none (or whose line cannot be read): its line number. Written
    as that number, marked `"id_from_line": true` (`ID_FROM_LINE`), and kept apart from the ids
    rows give by `id_key`: a row without an id on line 2 and a row with `"id": 2` are two rows.
    As an `int` it equals the number: compare ids by `id_key`."""

    __slots__ = ()


RowId = str | int  # an int may be a `LineId`
ID_FROM_LINE = "id_from_line"  # the output key that marks a `LineId`


def id_key(row_id: RowId) -> str:
    """One spelling per id, so that 7, "7" and line 7 stay different rows."""
    if isinstance(row_id, int):
        return f"l{row_id}" if isinstance(row_id, LineId) else f"i{row_id}"
    return f"s{row_id}"


def id_of_record(record: dict[str, Any]) -> RowId | None:
    """The row id an output record (`batch.sink.records.native_record`) was written for; None
    when it holds no usable one. An integer id is a `LineId` when the record says so: a record
    written before the mark existed reads as the id a row gave."""
    value = record.get("id")
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    if isinstance(value, int) and record.get(ID_FROM_LINE) is True:
        return LineId(value)
    return value


@dataclass(frozen=True, slots=True)
class RowDefaults:
    """The run's settings that fill in what a row does not say itself."""

    model: str | None
    options: dict[str, Any]
    template: str | None = None
    system: str | None = None
    schema: OutputSchema | None = None  # every row's, unless a row brings its own
    images: ImagePolicy = field(default_factory=lambda: ImagePolicy(Path(".")))

    @property
    def format(self) -> Format | None:
        return self.schema.json_schema if self.schema else None


@dataclass(slots=True)
class Row:
    line: int
    id: RowId
    request: ChatRequest | None = None
    schema: OutputSchema | None = None  # what its reply is validated against; None: text
    failure: BadInput | None = None
    has_id: bool = True  # False when the line could not be read far enough to know its id
    seq: int = 0  # the row's place among the rows sent this run, for ordered output
    digest: str = ""  # of its input line and images (core.digest); "" until the source sets it
    images: tuple[bytes, ...] = ()  # digests of the images it names, for its request key
    replaces: bool = False  # its id is done from another input: its new line replaces the old


@dataclass(slots=True)
class RowResult:
    row: Row
    output: Any = None
    failure: RowFailure | None = None
    trace_id: str | None = None  # with OpenTelemetry: the row's trace
    attempts: int = 0
    usage: Usage = field(default_factory=Usage)
    retries: list[Cause] = field(default_factory=list)  # the cause of each retry
    host: str | None = None
    done_reason: str | None = None
    durations_ns: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    content: str | None = None  # the accepted reply as the model wrote it
    logprobs: tuple[TokenLogprob, ...] | None = None  # its tokens', with --logprobs
    confidence: dict[str, float] | None = None  # per categorical field (batch.labelling.confidence)
    same_as: RowId | None = None  # a copy of this row's result: the request was the same
    cached: bool = False  # taken from the --cache file, not asked
    # A panel's (batch.labelling.panel): each answer, and each categorical field's share of
    # the valid ones that agree with the consensus. Its usage and attempts are this run's.
    votes: list[dict[str, Any]] | None = None
    agreement: dict[str, float] | None = None

    def fail(self, failure: RowFailure) -> None:
        """The row fails after all (its output cannot be written): it keeps no output."""
        self.output = None
        self.failure = failure
