"""OpenTelemetry traces and metrics, after the GenAI semantic conventions: one CLIENT span per
attempt, named `chat {model}`; each row a trace of its own (a row span holding its attempts)
linked to the run's span; `gen_ai.client.operation.duration` and `gen_ai.client.token.usage`
on the conventions' bucket boundaries.

Exported over OTLP (`http/protobuf`), configured by the standard `OTEL_*` variables: endpoint,
headers, service name, resource attributes. No prompt, output or secret is put in a span, an
event or an attribute unless OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true; errors
carry their type only, never their message (a re-ask's message quotes the model's reply).
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import context, trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from batch.core.chat import ChatRequest, Completion
from batch.core.errors import ConfigError
from batch.observe import DURATION_BUCKETS

TOKEN_BUCKETS = [4**n for n in range(14)]  # 1, 4, 16, ... 67108864
CAPTURE = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
PROVIDER = "ollama"
# Ollama's option names for the request attributes the conventions name.
REQUEST_OPTIONS = {"temperature": "temperature", "seed": "seed", "num_predict": "max_tokens"}


class Tracing:
    """The run's tracer and meter, and its span (`run`), which every row's trace links to."""

    def __init__(self, service: str = "batch") -> None:
        protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
        )
        if protocol != "http/protobuf":
            raise ConfigError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not supported: batch exports "
                "OTLP over http/protobuf; set it to http/protobuf (collectors take it on 4318)"
            )
        # Attributes given here win over the environment's: pass its service name on.
        named = os.environ.get("OTEL_SERVICE_NAME") or _service_from_env() or service
        resource = Resource.create({"service.name": named})
        self._traces = TracerProvider(resource=resource)
        processor = BatchSpanProcessor(OTLPSpanExporter(), **_queue())  # type: ignore[arg-type]
        self._traces.add_span_processor(processor)
        reader = PeriodicExportingMetricReader(OTLPMetricExporter())
        # Exemplars (a span's id on a histogram sample) cost more than the sample: left out.
        self._metrics = MeterProvider(
            resource=resource, metric_readers=[reader], exemplar_filter=AlwaysOffExemplarFilter()
        )
        self.tracer = self._traces.get_tracer("batch")
        meter = self._metrics.get_meter("batch")
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Measures number of input and output tokens used",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self.capture = os.environ.get(CAPTURE, "").strip().lower() == "true"
        self.run = self.tracer.start_span("batch run", kind=SpanKind.INTERNAL)

    def row_span(self, row_id: str) -> Span:
        """A new trace for the row, linked to the run's."""
        return self.tracer.start_span(
            "label row",
            context=context.Context(),  # no parent: a trace of its own
            links=[Link(self.run.get_span_context())],
            attributes={"batch.row.id": row_id},
        )

    def attempt_span(self, parent: Span, request: ChatRequest) -> Span:
        span = self.tracer.start_span(
            f"chat {request.model}",
            kind=SpanKind.CLIENT,
            context=trace.set_span_in_context(parent),
            attributes=request_attributes(request),
        )
        if self.capture:
            span.set_attribute("gen_ai.input.messages", json.dumps(request.messages))
        return span

    def replied(self, span: Span, completion: Completion, measured: dict[str, Any]) -> None:
        """Sets the reply's attributes and records its tokens under `measured`."""
        span.set_attributes(reply_attributes(completion))
        if self.capture:
            output = [{"role": "assistant", "content": completion.content}]
            span.set_attribute("gen_ai.output.messages", json.dumps(output))
        for kind, count in (
            ("input", completion.usage.input_tokens),
            ("output", completion.usage.output_tokens),
        ):
            # The conventions give token usage no error.type: a rejected reply's tokens count.
            used = {k: v for k, v in measured.items() if k != "error.type"}
            self.tokens.record(count, {**used, "gen_ai.token.type": kind})

    def failed(self, span: Span, error_type: str) -> None:
        span.set_attribute("error.type", error_type)
        span.set_status(Status(StatusCode.ERROR, error_type))

    def shutdown(self, status: str) -> None:
        """Ends the run's span and sends whatever is not sent yet."""
        self.run.set_attribute("batch.run.status", status)
        self.run.end()
        self._traces.shutdown()
        self._metrics.shutdown()


def request_attributes(request: ChatRequest) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": PROVIDER,
        "gen_ai.request.model": request.model,
        "gen_ai.output.type": "json" if request.format is not None else "text",
    }
    for option, name in REQUEST_OPTIONS.items():
        value = request.options.get(option)
        if isinstance(value, int | float) and not isinstance(value, bool):
            attributes[f"gen_ai.request.{name}"] = value
    return attributes


def reply_attributes(completion: Completion) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "gen_ai.usage.input_tokens": completion.usage.input_tokens,
        "gen_ai.usage.output_tokens": completion.usage.output_tokens,
    }
    if completion.model:  # a backend that does not say leaves it out (None is no attribute)
        attributes["gen_ai.response.model"] = completion.model
    if completion.done_reason:
        attributes["gen_ai.response.finish_reasons"] = [completion.done_reason]
    return attributes


def server_attributes(host: str | None) -> dict[str, Any]:
    """`server.address` and `server.port` of a host URL (already without credentials)."""
    if not host or "://" not in host:
        return {}
    parts = urlsplit(host)
    attributes: dict[str, Any] = {"server.address": parts.hostname or ""}
    port = parts.port or (443 if parts.scheme == "https" else 80)
    attributes["server.port"] = port
    return attributes


def metric_attributes(
    request: ChatRequest, host: str | None, completion: Completion | None, error: str | None
) -> dict[str, Any]:
    """The attempt's attributes the conventions put on its metrics: from the request and the
    reply, not read back from the span (an unsampled span keeps none)."""
    measured: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": PROVIDER,
        "gen_ai.request.model": request.model,
        **server_attributes(host),
    }
    if completion is not None and completion.model:
        measured["gen_ai.response.model"] = completion.model
    if error is not None:
        measured["error.type"] = error
    return measured


def _queue() -> dict[str, int]:
    """Room for the spans of a fast run between two exports (the default queue of 2048 drops
    spans at a thousand rows a second), unless OTEL_BSP_* says otherwise."""
    sizes = {"max_queue_size": 1 << 16, "max_export_batch_size": 4096}
    return {k: v for k, v in sizes.items() if f"OTEL_BSP_{k.upper()}" not in os.environ}


def _service_from_env() -> str | None:
    for pair in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, _, value = pair.partition("=")
        if key.strip() == "service.name" and value.strip():
            return value.strip()
    return None
