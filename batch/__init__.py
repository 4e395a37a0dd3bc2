"""batch: label JSONL rows with models served by Ollama, bounded, retried, validated, resumable.

    from batch import JobConfig, run_job_sync
    config = JobConfig(input="rows.jsonl", model="llama3.2", schema_ref="labels:Label")
    summary = run_job_sync(config)

Names are imported on first use, so `python -m batch --help` does not pay for the whole stack.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batch.api import run_job_sync
    from batch.core.chat import Backend, ChatRequest, Completion, Usage
    from batch.core.errors import BatchError, ConfigError, FatalRunError
    from batch.run.config import JobConfig, load_config
    from batch.run.pipeline import run_job
    from batch.run.summary import RunSummary

_HOMES = {
    "run_job_sync": "batch.api",
    "Backend": "batch.core.chat",
    "ChatRequest": "batch.core.chat",
    "Completion": "batch.core.chat",
    "Usage": "batch.core.chat",
    "JobConfig": "batch.run.config",
    "load_config": "batch.run.config",
    "BatchError": "batch.core.errors",
    "ConfigError": "batch.core.errors",
    "FatalRunError": "batch.core.errors",
    "run_job": "batch.run.pipeline",
    "RunSummary": "batch.run.summary",
}
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


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'batch' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
