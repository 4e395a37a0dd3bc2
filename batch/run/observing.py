"""What watches the run, made from its settings: Prometheus metrics (`--metrics-textfile`,
`--pushgateway`, `--metrics-port`) and OpenTelemetry (`--otel` or `OTEL_EXPORTER_OTLP_*`).
With neither asked for, nothing is imported and the labeller gets `NO_EVENTS`."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

from batch.core.errors import ConfigError
from batch.core.events import NO_EVENTS, RunEvents
from batch.core.stats import RunStats
from batch.run.config import JobConfig
from batch.run.progress import InputSize
from batch.serving.hosts import Host

if TYPE_CHECKING:
    from batch.observe.export import MetricsOut
    from batch.observe.tracing import Tracing

log = logging.getLogger(__name__)

EXPORT_EVERY_S = 10.0  # between metrics exports while the run lasts


@dataclass
class RowsLeft:
    """The rows this run has still to do: its input's size less the rows done."""

    stats: RunStats
    size: InputSize

    def __call__(self) -> int | None:
        total = self.size.rows
        return None if total is None else max(total - self.stats.done, 0)


@dataclass
class Observers:
    events: RunEvents = NO_EVENTS
    metrics: MetricsOut | None = None
    tracing: Tracing | None = None
    rows_left: RowsLeft | None = None
    _closed: bool = field(default=False, repr=False)

    async def every_while(self, every_s: float) -> None:
        """Exports the metrics every `every_s` seconds until cancelled."""
        if self.metrics is None:
            return
        while True:  # `export` turns every failure into a warning: this loop never ends a run
            await anyio.sleep(every_s)
            await anyio.to_thread.run_sync(self.metrics.export)

    async def finish(self, *, succeeded: bool, status: str) -> None:
        """The last export (the last success only when the run exits 0), then close."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.metrics is not None:
                metrics = self.metrics
                await anyio.to_thread.run_sync(
                    lambda: metrics.export(final=True, succeeded=succeeded)
                )
        finally:
            self.close()
            if self.tracing is not None:
                await anyio.to_thread.run_sync(self.tracing.shutdown, status)

    def close(self) -> None:
        """Stops the live /metrics (also when the run could not start)."""
        if self.metrics is not None:
            self.metrics.close()


def open_observers(
    config: JobConfig, stats: RunStats, hosts: Sequence[Host], size: InputSize
) -> Observers:
    observe = config.observe
    tracing_on = tracing_wanted(observe.otel)
    if not observe.metrics_wanted and not tracing_on:
        return Observers()
    from batch.observe.watch import Watch

    rows_left = RowsLeft(stats, size)
    tracing = _tracing() if tracing_on else None  # first: it may refuse, and nothing is open
    metrics_out = _metrics_out(config, stats, hosts, rows_left) if observe.metrics_wanted else None
    watch = Watch(metrics_out.metrics if metrics_out else None, tracing)
    return Observers(watch, metrics_out, tracing, rows_left)


def tracing_wanted(asked: bool, environ: Mapping[str, str] | None = None) -> bool:
    """Tracing is on with --otel, or when an OTLP endpoint is set, as every SDK does."""
    env = os.environ if environ is None else environ
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return asked or any(env.get(name) for name in endpoints)


def trace_header_source(asked: bool) -> Callable[[], dict[str, str]] | None:
    """With tracing on: the W3C trace headers of the current span, for each request."""
    if not tracing_wanted(asked):
        return None
    try:
        from opentelemetry.propagate import inject
    except ImportError:
        return None  # said when the tracer is made (`_tracing`)

    def headers() -> dict[str, str]:
        carrier: dict[str, str] = {}
        inject(carrier)
        return carrier

    return headers


def _metrics_out(
    config: JobConfig, stats: RunStats, hosts: Sequence[Host], rows_left: RowsLeft
) -> MetricsOut:
    from batch.observe.export import MetricsOut
    from batch.observe.metrics import RunMetrics

    observe = config.observe
    shard = config.shard_spec
    out = MetricsOut(
        RunMetrics(stats, lambda: hosts, rows_left),
        textfile=observe.metrics_textfile,
        pushgateway=observe.pushgateway,
        job=observe.metrics_job,
        shard=str(shard) if shard else None,
        listen=observe.listen,
    )
    out.start()
    return out


def _tracing() -> Tracing:
    try:
        from batch.observe.tracing import Tracing
    except ImportError as missing:
        raise ConfigError(
            f"OpenTelemetry is asked for (--otel or OTEL_EXPORTER_OTLP_*) but {missing.name} is "
            "not installed: pip install -e '.[otel]', or unset them"
        ) from None
    return Tracing()
