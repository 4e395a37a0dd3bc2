"""An OTLP/HTTP receiver for the tests: what a collector would be given, decoded with
`opentelemetry-proto` from the exporter's real protobuf requests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.conftest import send_reply, serving


class OtlpReceiver:
    """`with OtlpReceiver() as receiver:` serves /v1/traces and /v1/metrics on loopback."""

    def __init__(self) -> None:
        self.traces: list[ExportTraceServiceRequest] = []
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.headers: list[dict[str, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                reply: Any
                if self.path == "/v1/traces":
                    receiver.traces.append(ExportTraceServiceRequest.FromString(body))
                    reply = ExportTraceServiceResponse()
                elif self.path == "/v1/metrics":
                    receiver.metrics.append(ExportMetricsServiceRequest.FromString(body))
                    reply = ExportMetricsServiceResponse()
                else:
                    self.send_error(404)
                    return
                payload = reply.SerializeToString()
                send_reply(self, payload, "application/x-protobuf")

            def log_message(self, *_: Any) -> None:
                return None

        self._handler = Handler
        self._stack = ExitStack()
        self.url = ""

    def __enter__(self) -> OtlpReceiver:
        self.url = self._stack.enter_context(serving(self._handler))
        return self

    def __exit__(self, *_: object) -> None:
        self._stack.close()

    def spans(self) -> Iterator[tuple[dict[str, Any], Any]]:
        """Every span received, with its resource's attributes."""
        for request in self.traces:
            for resource_spans in request.resource_spans:
                resource = attributes(resource_spans.resource.attributes)
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        yield resource, span

    def metric_points(self, name: str) -> list[Any]:
        points = []
        for request in self.metrics:
            for resource_metrics in request.resource_metrics:
                for scope in resource_metrics.scope_metrics:
                    for metric in scope.metrics:
                        if metric.name == name:
                            points.extend(metric.histogram.data_points)
        return points


def value(any_value: AnyValue) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [value(item) for item in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


def attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: value(pair.value) for pair in pairs}
