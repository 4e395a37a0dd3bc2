"""What the run tells the outside while it lasts: each row and each attempt, as they happen.

The labeller calls these around every row and every attempt; `batch/observe/` implements them
for Prometheus and OpenTelemetry. With nothing asked for, `NO_EVENTS` does nothing, and neither
library is imported.
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol

from batch.core.chat import ChatRequest, Completion
from batch.core.rows import Row, RowResult


class AttemptSeen(Protocol):
    """One attempt, open while its request is under way (a trace's current span)."""

    def __enter__(self) -> AttemptSeen: ...

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def replied(self, completion: Completion) -> None:
        """The server answered (its answer may still fail validation: then `failed` too)."""

    def failed(self, error_type: str, host: str | None) -> None:
        """The attempt failed: `error_type` is a `Cause` (or an error kind)."""


class RowSeen(Protocol):
    def __enter__(self) -> RowSeen: ...

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def attempt(self, request: ChatRequest) -> AttemptSeen: ...

    def finished(self, result: RowResult) -> None:
        """The row's result, before it is written (a trace stamps its id on it)."""


class RunEvents(Protocol):
    def row(self, row: Row) -> RowSeen: ...


class _Nothing:
    """Every event, ignored: one shared object, so that a run with nothing watching pays a
    method call an attempt."""

    def __enter__(self) -> _Nothing:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def row(self, row: Row) -> _Nothing:
        return self

    def attempt(self, request: ChatRequest) -> _Nothing:
        return self

    def replied(self, completion: Completion) -> None:
        return None

    def failed(self, error_type: str, host: str | None) -> None:
        return None

    def finished(self, result: RowResult) -> None:
        return None


NO_EVENTS: RunEvents = _Nothing()
