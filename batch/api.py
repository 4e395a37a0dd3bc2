"""The pipeline for code without an event loop of its own."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import anyio

from batch.core.chat import Backend
from batch.run.config import JobConfig
from batch.run.pipeline import run_job
from batch.run.summary import RunSummary


def run_job_sync(config: JobConfig, *, backends: Sequence[Backend] | None = None) -> RunSummary:
    """`run_job` from synchronous code. In a notebook or async code, `await run_job(config)`."""
    return anyio.run(partial(run_job, config, backends=backends))
