"""batch: label JSONL rows with models served by Ollama, bounded, retried, validated, resumable.

    from batch import JobConfig, run_job_sync
config = JobConfig(input="rows.jsonl", model="llama3.2", schema_ref="labels:Label")
    summary = run_job_sync(config)
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import anyio

from batch.backends.base import Backend, ChatRequest, Completion, Usage
from batch.config import JobConfig, load_config
from batch.errors import BatchError, ConfigError, FatalRunError
from batch.pipeline import run_job
from batch.summary import RunSummary


def run_job_sync(config: JobConfig, *, backends: Sequence[Backend] | None = None) -> RunSummary:
    """`run_job` for code without an event loop. In a notebook, `await run_job(config)`."""
    return anyio.run(partial(run_job, config, backends=backends))


__all__ = [
    "Backend",
    "BatchError",
    "ChatRequest",
    "Completion",
    "ConfigError",
    "FatalRunError",
    "JobConfig",
    "RunSummary",
    "Usage",
    "load_config",
    "run_job",
    "run_job_sync",
]
