"""The run's Prometheus metrics. Their names and labels are a contract (docs/observe.md): no
prompt, output or secret in a label; `host` is the URL without credentials.

Attempts are counted as they end (`attempt_ended`); the rows, the hosts' limits and what is in
flight are read from the run's own counters whenever the metrics are exported, so the hot path
pays nothing for them and they always equal the summary's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from batch.core.chat import Completion
from batch.core.stats import RunStats
from batch.observe import DURATION_BUCKETS
from batch.serving.hosts import Host
from batch.serving.limits import server_wait

LAST_SUCCESS = "batch_last_success_timestamp_seconds"

disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series beside every counter: noise for a batch job


class RunMetrics:
    def __init__(
        self,
        stats: RunStats,
        hosts: Callable[[], Sequence[Host]],
        rows_left: Callable[[], int | None],
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "batch_requests",
            "requests sent, every attempt",
            ["host", "model"],
            registry=self.registry,
        )
        self._failures = Counter(
            "batch_request_failures",
            "failed attempts by cause",
            ["host", "model", "cause"],
            registry=self.registry,
        )
        self._tokens = Counter(
            "batch_tokens",
            "tokens of every reply, by type",
            ["model", "type"],
            registry=self.registry,
        )
        self._duration = Histogram(
            "batch_request_duration_seconds",
            "time from sending a request to its reply or failure",
            ["host", "model"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self._server_wait = Histogram(
            "batch_server_wait_seconds",
            "the server's own wait before it began a reply (from Ollama's durations)",
            ["host", "model"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_RunState(stats, hosts, rows_left))
        # Only in what a run that exits 0 exports: a failed run never moves it (see `success`).
        self.success = CollectorRegistry()
        self._last_success = Gauge(
            LAST_SUCCESS,
            "when a run of this job last exited 0 (Unix time)",
            registry=self.success,
        )
        self.has_success = False  # no value yet: the gauge is not exported (not 0)

    def attempt_ended(
        self,
        host: str | None,
        model: str,
        seconds: float,
        completion: Completion | None,
        error_type: str | None,
    ) -> None:
        host = host or "none"  # a request that failed before any host took it
        self._requests.labels(host, model).inc()
        self._duration.labels(host, model).observe(seconds)
        if completion is not None:
            usage = completion.usage
            self._tokens.labels(model, "input").inc(usage.input_tokens)
            self._tokens.labels(model, "output").inc(usage.output_tokens)
            if (wait := server_wait(completion)) is not None:
                self._server_wait.labels(host, model).observe(wait)
        if error_type is not None:
            self._failures.labels(host, model, error_type).inc()

    def succeeded(self) -> None:
        self._last_success.set(time.time())
        self.has_success = True

    def keep_last_success(self, textfile: Path) -> None:
        """The last success an earlier run wrote to `textfile`, carried over: the file is
        rewritten whole, and a failed run must not erase it."""
        try:
            text = textfile.read_text(encoding="utf-8")
            families = list(text_string_to_metric_families(text))
        except (OSError, ValueError):
            return
        for family in families:
            for sample in family.samples:
                if sample.name == LAST_SUCCESS:
                    self._last_success.set(sample.value)
                    self.has_success = True


class _RunState(Collector):
    """Read at each export: the rows by status, each host's limit and requests in flight."""

    def __init__(
        self,
        stats: RunStats,
        hosts: Callable[[], Sequence[Host]],
        rows_left: Callable[[], int | None],
    ) -> None:
        self._stats = stats
        self._hosts = hosts
        self._rows_left = rows_left

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        rows = CounterMetricFamily("batch_rows", "rows this run finished", labels=["status"])
        rows.add_metric(["ok"], stats.ok)
        rows.add_metric(["failed"], stats.error)
        rows.add_metric(["skipped"], stats.skipped)  # done by an earlier run
        yield rows
        limit = GaugeMetricFamily(
            "batch_concurrency_limit", "requests a host may have in flight", labels=["host"]
        )
        in_flight = GaugeMetricFamily(
            "batch_in_flight", "requests in flight to a host", labels=["host"]
        )
        up = GaugeMetricFamily(
            "batch_host_up", "1 while a host is in rotation, 0 while it is out", labels=["host"]
        )
        for host in self._hosts():
            limit.add_metric([host.name], host.concurrency.current)
            in_flight.add_metric([host.name], host.in_flight)
            up.add_metric([host.name], 1 if host.up else 0)
        yield limit
        yield in_flight
        yield up
        left = self._rows_left()
        if left is not None:
            yield GaugeMetricFamily("batch_rows_left", "rows this run has still to do", left)
