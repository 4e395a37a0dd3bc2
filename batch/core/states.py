"""Why a run stopped before its input was done: a budget met, or a signal."""

from __future__ import annotations

import signal
from enum import StrEnum


class StopReason(StrEnum):
    """The summary's `stopped_by`. A budget stop exits 3 and the next run continues; a signal
    stop exits 128 + the signal's number."""

    DEADLINE = "deadline"
    MAX_TOKENS = "max_tokens"
    MAX_REQUESTS = "max_requests"
    MAX_ROWS = "max_rows"  # `plan --sample N`
    SIGINT = "SIGINT"
    SIGTERM = "SIGTERM"

    @property
    def is_budget(self) -> bool:
        return self not in (StopReason.SIGINT, StopReason.SIGTERM)

    @classmethod
    def of_signal(cls, signum: int) -> StopReason:
        """The stop by `signum` (SIGINT or SIGTERM, the signals a run handles)."""
        return cls(signal.Signals(signum).name)
