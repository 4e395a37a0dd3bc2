"""Which backend serves a host value: `embedded` runs a model in process, anything else is an
Ollama URL. Explicit only: an unreachable Ollama host never falls back to the embedded model."""

from __future__ import annotations

import os
from collections.abc import Sequence

from batch.backends.base import Backend
from batch.config import JobConfig
from batch.hosts import HostPolicy, parse_host
from batch.pool import HostPool


def open_pool(config: JobConfig, backends: Sequence[Backend] | None = None) -> HostPool:
    """The configured hosts as one backend; `backends`, when given, serve in their place, each
    at --concurrency."""
    if backends is None:
        return HostPool(open_backends(config), host_concurrency(config), host_policy(config))
    return HostPool(backends, config.concurrency, host_policy(config))


def host_policy(config: JobConfig) -> HostPolicy:
    return HostPolicy(config.max_attempts, config.backoff, config.backoff_max)


def host_concurrency(config: JobConfig) -> list[int]:
    """Each host's own `#N`, else --concurrency."""
    return [parse_host(h).concurrency or config.concurrency for h in config.hosts]


def open_backends(config: JobConfig) -> list[Backend]:
    from batch.backends.embedded import EmbeddedBackend, is_embedded
    from batch.backends.http_client import AccessSettings
    from batch.backends.ollama import OllamaBackend

    backends: list[Backend] = []
    for host, concurrency in zip(config.hosts, host_concurrency(config), strict=True):
        host = parse_host(host).url
        if is_embedded(host):
            backends.append(
                EmbeddedBackend(
                    config.model,
                    contexts=min(config.embedded_contexts or os.cpu_count() or 1, concurrency),
                    timeout=config.timeout,
                    options=config.options,
                )
            )
        else:
            backends.append(
                OllamaBackend(
                    host,
                    concurrency=concurrency,
                    timeout=config.timeout,
                    access=AccessSettings.from_config(config),
                    keep_alive=config.keep_alive,
                    think=config.think,
                )
            )
    return backends
