"""Where the Prometheus metrics go, any together: a textfile for node_exporter's textfile
collector, a Pushgateway, a live `/metrics`. The first two are written every `EVERY_S` seconds
and at the end; the last is read whenever Prometheus scrapes.

The last success (`batch_last_success_timestamp_seconds`) is exported only by a run that exits
0: pushed with POST, which replaces only the metrics it sends, so a failed run leaves the
gateway's value alone; carried over from the earlier textfile, which is rewritten whole.
"""

from __future__ import annotations

import http.client
import logging
from pathlib import Path
from typing import Any

from prometheus_client import pushadd_to_gateway, start_http_server, write_to_textfile
from prometheus_client.registry import Collector, CollectorRegistry

from batch.core.errors import FatalRunError
from batch.observe.metrics import RunMetrics

log = logging.getLogger(__name__)

EVERY_S = 10.0  # between exports while the run lasts
PUSH_TIMEOUT_S = 10.0


class MetricsOut:
    def __init__(
        self,
        metrics: RunMetrics,
        *,
        textfile: Path | None = None,
        pushgateway: str | None = None,
        job: str = "batch",
        shard: str | None = None,
        listen: tuple[str, int] | None = None,
    ) -> None:
        self.metrics = metrics
        self._textfile = textfile
        self._gateway = pushgateway
        self._job = job
        # Never `instance`: each run would be a group of its own, and old ones never go.
        self._grouping = {"shard": shard} if shard else {}
        self._listen = listen
        self._server: Any = None
        self.port: int | None = None  # the live /metrics' port, once serving
        if textfile is not None:
            metrics.keep_last_success(textfile)

    def start(self) -> None:
        if self._listen is None:
            return
        address, port = self._listen
        try:
            self._server, _ = start_http_server(port, addr=address, registry=self._both())
        except OSError as exc:
            raise FatalRunError(
                f"cannot serve metrics on {address}:{port} (--metrics-port): "
                f"{exc.strerror or exc}; pick another port"
            ) from None
        self.port = self._server.server_port
        log.info("metrics at http://%s:%d/metrics", address, self.port)

    def export(self, *, final: bool = False, succeeded: bool = False) -> None:
        """Writes the textfile and pushes to the gateway. A failure is a warning: metrics are
        worth less than the run. `succeeded` (at the end of a run that exits 0) stamps the
        last success."""
        if final and succeeded:
            self.metrics.succeeded()
        with_success = final and succeeded
        if self._textfile is not None:
            self._write(self._textfile)
        if self._gateway is not None:
            self._push(self._gateway, self._both() if with_success else self.metrics.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _both(self) -> Collector:
        return _WithSuccess(self.metrics)

    def _write(self, path: Path) -> None:
        try:
            write_to_textfile(str(path), self._both())  # a temporary file, then a rename
        except Exception as exc:  # a full disk, a folder gone: the run goes on without them
            log.warning(
                "cannot write metrics to %s (--metrics-textfile): %s; the run goes on",
                path,
                _reason(exc),
            )

    def _push(self, gateway: str, registry: Collector) -> None:
        try:
            pushadd_to_gateway(
                gateway,
                job=self._job,
                registry=registry,
                grouping_key=self._grouping,
                timeout=PUSH_TIMEOUT_S,
            )
        except Exception as exc:  # refused, not HTTP, a bad URL: the run goes on without them
            log.warning(
                "cannot push metrics to %s (--pushgateway): %s; the run goes on",
                gateway,
                _reason(exc),
            )


def _reason(exc: Exception) -> str:
    """What went wrong, in words: an OS error's text, a URL error's reason, else the message
    (a reply that is no HTTP is named as such)."""
    found = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
    reason = " ".join(str(found).split())  # one log line, whatever the other end sent
    if isinstance(exc, http.client.HTTPException):
        return f"it did not answer as an HTTP server ({reason})"
    return reason


class _WithSuccess(CollectorRegistry):
    """The run's metrics and, once it has a value, the last success."""

    def __init__(self, metrics: RunMetrics) -> None:
        super().__init__(auto_describe=True)
        self._metrics = metrics

    def collect(self) -> Any:
        yield from self._metrics.registry.collect()
        if self._metrics.has_success:
            yield from self._metrics.success.collect()
