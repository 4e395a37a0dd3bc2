"""The run's parts made from its settings: the host pool (which backend serves a host value:
`embedded` runs a model in process, anything else is an Ollama URL; explicit only, so an
unreachable Ollama host never falls back to the embedded model), the files only one run may
write, the shared cache, and the label watch."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import anyio

from batch.core.chat import Backend
from batch.reuse.cache import AnswerCache
from batch.run.config import JobConfig
from batch.run.observing import trace_header_source
from batch.serving.hosts import HostPolicy, parse_host
from batch.serving.limits import AdaptiveLimit, Limit
from batch.serving.pool import HostPool, Meter
from batch.sink.label_watch import LabelWatch


def open_pool(
    config: JobConfig, backends: Sequence[Backend] | None = None, meter: Meter | None = None
) -> HostPool:
    """The configured hosts as one backend; `backends`, when given, serve in their place, each
    at --concurrency. `meter` sees every request (the run's budgets)."""
    if backends is None:
        return HostPool(
            open_backends(config),
            host_concurrency(config),
            host_policy(config),
            [_limit(config, host) for host in config.serving.hosts],
            meter=meter,
        )
    if config.serving.concurrency == "auto":
        limits = [AdaptiveLimit(config.serving.max_concurrency) for _ in backends]
        return HostPool(
            backends, config.serving.max_concurrency, host_policy(config), limits, meter=meter
        )
    return HostPool(backends, config.serving.concurrency, host_policy(config), meter=meter)


def host_policy(config: JobConfig) -> HostPolicy:
    return HostPolicy(
        config.retries.max_attempts, config.retries.backoff, config.retries.backoff_max
    )


def host_concurrency(config: JobConfig) -> list[int]:
    """Each host's own `#N`, else --concurrency; for a limit found as the run goes, its ceiling
    (an embedded model's: one context a core)."""
    counts = []
    for host in config.serving.hosts:
        spec = parse_host(host)
        if spec.concurrency is not None:
            counts.append(spec.concurrency)
        elif not spec.auto and isinstance(config.serving.concurrency, int):
            counts.append(config.serving.concurrency)
        elif is_embedded(spec.url):  # in process: no round trip to cover, no queue to find
            counts.append(config.serving.embedded_contexts or os.cpu_count() or 1)
        else:
            counts.append(config.serving.max_concurrency)
    return counts


def _limit(config: JobConfig, host: str) -> Limit | None:
    """An adaptive limit for a host under `auto`; None: its count is fixed."""
    spec = parse_host(host)
    fixed = spec.concurrency is not None or (not spec.auto and config.serving.concurrency != "auto")
    if fixed or is_embedded(spec.url):
        return None
    return AdaptiveLimit(config.serving.max_concurrency)


def is_embedded(host: str) -> bool:
    from batch.serving.embedded import is_embedded

    return is_embedded(host)


def open_backends(config: JobConfig) -> list[Backend]:
    from batch.serving.embedded import EmbeddedBackend
    from batch.serving.http_client import AccessSettings
    from batch.serving.ollama import OllamaBackend

    backends: list[Backend] = []
    trace_headers = trace_header_source(config.observe.otel)
    for host, concurrency in zip(config.serving.hosts, host_concurrency(config), strict=True):
        host = parse_host(host).url
        if is_embedded(host):
            backends.append(
                EmbeddedBackend(
                    config.prompt.model,
                    contexts=min(
                        config.serving.embedded_contexts or os.cpu_count() or 1, concurrency
                    ),
                    timeout=config.retries.timeout,
                    options=config.prompt.options,
                )
            )
        else:
            backends.append(
                OllamaBackend(
                    host,
                    concurrency=concurrency,
                    timeout=config.retries.timeout,
                    access=AccessSettings.from_config(config.access),
                    keep_alive=config.retries.keep_alive,
                    think=config.prompt.think,
                    trace_headers=trace_headers,
                )
            )
    return backends


def written_by(config: JobConfig) -> list[Path]:
    """The files only one run at a time may write: the output, and the errors file."""
    return [config.output_path, *([config.files.errors_file] if config.files.errors_file else [])]


def open_answer_cache(path: Path | None) -> AnswerCache | None:
    """The --cache file, checked before any output is touched (`ConfigError` if not one)."""
    return None if path is None else AnswerCache(path)


def reply_salt(config: JobConfig) -> str:
    """Part of every request key: `think` is sent beside the request, not in it."""
    return "" if config.prompt.think is None else f"think={config.prompt.think}"


async def open_label_watch(config: JobConfig) -> LabelWatch:
    """The run's watch; `--overwrite` starts the review file over with the output."""
    review = config.review_path
    if review is not None and config.files.overwrite:
        await anyio.to_thread.run_sync(partial(review.unlink, missing_ok=True))
    return LabelWatch(
        logprobs=config.quality.asks_logprobs,
        review_below=config.quality.review_below,
        review_file=review,
    )
