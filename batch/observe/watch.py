"""The run's events (`batch.core.events`) for Prometheus, OpenTelemetry, or both."""

from __future__ import annotations

import time
from contextvars import Token
from types import TracebackType
from typing import Any

from opentelemetry import context, trace
from opentelemetry.context import Context

from batch.core.chat import ChatRequest, Completion
from batch.core.rows import Row, RowResult
from batch.observe.metrics import RunMetrics
from batch.observe.tracing import Tracing, metric_attributes, server_attributes


class Watch:
    """What watches the run: metrics, traces, or both (either may be None)."""

    def __init__(self, metrics: RunMetrics | None, tracing: Tracing | None) -> None:
        self.metrics = metrics
        self.tracing = tracing

    def row(self, row: Row) -> _Row:
        return _Row(self, row)


class _Row:
    def __init__(self, watch: Watch, row: Row) -> None:
        self._watch = watch
        self._row = row
        self._span: Any = None

    def __enter__(self) -> _Row:
        if (tracing := self._watch.tracing) is not None:
            self._span = tracing.row_span(str(self._row.id))
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._span is not None:
            if kind is not None:
                self._span.set_attribute("error.type", kind.__name__)
            self._span.end()

    def attempt(self, request: ChatRequest) -> _Attempt:
        return _Attempt(self._watch, self._span, request)

    def finished(self, result: RowResult) -> None:
        if self._span is None:
            return
        result.trace_id = trace.format_trace_id(self._span.get_span_context().trace_id)
        status = "ok" if result.failure is None else "failed"
        self._span.set_attribute("batch.row.status", status)
        if result.failure is not None:
            self._span.set_attribute("error.type", str(result.failure.kind))


class _Attempt:
    """Open while the request is under way: its span is the current one, so the request's
    `traceparent` header names it."""

    def __init__(self, watch: Watch, row_span: Any, request: ChatRequest) -> None:
        self._watch = watch
        self._row_span = row_span
        self._request = request
        self._span: Any = None
        self._token: Token[Context] | None = None
        self._host: str | None = None
        self._completion: Completion | None = None
        self._error: str | None = None
        self._started = 0.0

    def __enter__(self) -> _Attempt:
        if (tracing := self._watch.tracing) is not None and self._row_span is not None:
            self._span = tracing.attempt_span(self._row_span, self._request)
            self._token = context.attach(trace.set_span_in_context(self._span))
        self._started = time.monotonic()
        return self

    def replied(self, completion: Completion) -> None:
        self._completion = completion
        self._host = completion.host

    def failed(self, error_type: str, host: str | None) -> None:
        self._error = error_type
        self._host = self._host or host

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        seconds = time.monotonic() - self._started
        if kind is not None and self._error is None and self._completion is None:
            return self._end(None)  # cancelled or stopped before it was sent: not an attempt
        model = self._request.model
        if (metrics := self._watch.metrics) is not None:
            metrics.attempt_ended(self._host, model, seconds, self._completion, self._error)
        self._end(seconds)

    def _end(self, seconds: float | None) -> None:
        tracing, span = self._watch.tracing, self._span
        if tracing is None or span is None:
            return
        span.set_attributes(server_attributes(self._host))
        measured = metric_attributes(self._request, self._host, self._completion, self._error)
        if self._completion is not None:
            tracing.replied(span, self._completion, measured)
        if self._error is not None:
            tracing.failed(span, self._error)
        if seconds is not None:
            tracing.duration.record(seconds, measured)
        if self._token is not None:
            context.detach(self._token)
        span.end()
