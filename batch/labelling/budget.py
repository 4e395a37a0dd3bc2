"""Budgets: a deadline, tokens, requests. A run that meets one takes no new row, lets the rows in
flight finish, writes its summary and exits 3; the next run resumes.

    --deadline 50m | 2026-12-01T18:00Z   no row starts that, by the latencies seen, ends later
    --max-tokens N                       input plus output tokens, every attempt
    --max-requests N                     requests sent, every attempt

Two gates: before a row starts (`row_may_start`: is there room for one more row, counting the
rows already under way?) and before each request is sent (`sending`: raises `BudgetReached`, so a
retry or a row that waited for a slot goes no further). A row stopped at the second gate is not
written: the next run labels it. So a budget is never exceeded by more than the requests already
in flight when it was met.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from batch.core.chat import Usage
from batch.core.errors import BatchError
from batch.core.states import StopReason

RECENT = 100  # latencies kept to judge the next one
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)([smhd]))", re.IGNORECASE)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


# What the user typed to set each budget: messages name the flag, not the setting.
FLAGS = {
    StopReason.DEADLINE: "--deadline",
    StopReason.MAX_TOKENS: "--max-tokens",
    StopReason.MAX_REQUESTS: "--max-requests",
    StopReason.MAX_ROWS: "--sample",
}


class BudgetReached(BatchError):
    """Raised at the send gate; the row it stops is not written and runs next time."""

    def __init__(self, budget: StopReason) -> None:
        super().__init__(f"the {FLAGS[budget]} budget is spent")
        self.budget = budget


def parse_deadline(text: str, now: float | None = None) -> float:
    """`50m`, `1h30m`, `90s`, `2h` (from now) or an ISO time (`2026-12-01T18:00:00+00:00`, `Z`
    allowed; a time without a zone is UTC) -> a Unix time, later than `now`: a deadline already
    past would stop the run before its first row and tell the user to run again."""
    now = time.time() if now is None else now
    text = text.strip()
    parts = _DURATION.findall(text)
    if parts and "".join(n + u for n, u in parts).lower() == text.lower():
        seconds = sum(float(n) * _UNIT_S[u.lower()] for n, u in parts)
        if seconds <= 0:
            raise ValueError(f"{text!r}: a duration from now must be more than 0s")
        return now + seconds
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r}: write the deadline as a duration (50m, 1h30m, 90s) or an ISO time "
            "(2026-12-01T18:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if (deadline := moment.timestamp()) <= now:
        raise ValueError(
            f"{utc_text(deadline)} is already past (it is now {utc_text(now)}): give a later "
            "time, or a duration from now (50m)"
        )
    return deadline


def utc_text(moment: float) -> str:
    """A Unix time as an ISO time in UTC, to the second (`2026-12-01T18:00:00Z`)."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Budgets:
    deadline: float | None = None  # Unix time
    max_tokens: int | None = None
    max_requests: int | None = None
    max_rows: int | None = None  # `plan --sample N`: label N rows, then stop

    def __bool__(self) -> bool:
        return any(v is not None for v in vars(self).values())

    def named(self, budget: StopReason) -> str:
        """The budget as the user gave it: `--max-requests 50`, `--deadline 2026-...Z`."""
        value = {
            StopReason.DEADLINE: self.deadline,
            StopReason.MAX_TOKENS: self.max_tokens,
            StopReason.MAX_REQUESTS: self.max_requests,
            StopReason.MAX_ROWS: self.max_rows,
        }[budget]
        if budget == StopReason.DEADLINE and value is not None:
            return f"{FLAGS[budget]} {utc_text(value)}"
        return f"{FLAGS[budget]} {value}"


class Budget:
    """The budgets of one run and what it has spent; read and updated from the event loop."""

    def __init__(self, budgets: Budgets, clock: Callable[[], float] = time.time) -> None:
        self.budgets = budgets
        self._clock = clock
        self.tokens = 0
        self.requests = 0
        self.rows_started = 0
        self.rows_ended = 0
        self._row_seconds: deque[float] = deque(maxlen=RECENT)
        self._request_seconds: deque[float] = deque(maxlen=RECENT)
        self._row_tokens: deque[int] = deque(maxlen=RECENT)
        self._met: StopReason | None = None

    @property
    def met(self) -> StopReason | None:
        """The first budget found spent, at either gate or by the deadline's timer."""
        return self._met

    def row_may_start(self) -> bool:
        """Whether one more row fits, counting the rows under way; remembers which did not."""
        b, under_way = self.budgets, self.rows_started - self.rows_ended
        if b.max_rows is not None and self.rows_started >= b.max_rows:
            return self._meet(StopReason.MAX_ROWS)
        if b.max_requests is not None and self.requests + under_way >= b.max_requests:
            return self._meet(StopReason.MAX_REQUESTS)
        if b.max_tokens is not None:
            expected = _mean(self._row_tokens) * (under_way + 1)
            if self.tokens + expected >= b.max_tokens:
                return self._meet(StopReason.MAX_TOKENS)
        if b.deadline is not None and self._clock() + _high(self._row_seconds) >= b.deadline:
            return self._meet(StopReason.DEADLINE)
        self.rows_started += 1
        return True

    def row_ended(self, seconds: float, usage: Usage) -> None:
        self.rows_ended += 1
        self._row_seconds.append(seconds)
        self._row_tokens.append(usage.input_tokens + usage.output_tokens)

    def sending(self) -> None:
        """The gate before each request: raises `BudgetReached` when the request may not go."""
        b = self.budgets
        if b.max_requests is not None and self.requests >= b.max_requests:
            raise BudgetReached(self._named(StopReason.MAX_REQUESTS))
        if b.max_tokens is not None and self.tokens >= b.max_tokens:
            raise BudgetReached(self._named(StopReason.MAX_TOKENS))
        if b.deadline is not None and self._clock() + _high(self._request_seconds) >= b.deadline:
            raise BudgetReached(self._named(StopReason.DEADLINE))
        self.requests += 1

    def replied(self, seconds: float, usage: Usage) -> None:
        self._request_seconds.append(seconds)
        self.tokens += usage.input_tokens + usage.output_tokens

    def seconds_to_deadline(self) -> float | None:
        deadline = self.budgets.deadline
        return None if deadline is None else deadline - self._clock()

    def left(self) -> dict[str, float | int]:
        """What is left of each budget set (never below zero)."""
        b, left = self.budgets, dict[str, float | int]()
        if b.deadline is not None:
            left["seconds"] = round(max(0.0, b.deadline - self._clock()), 1)
        if b.max_tokens is not None:
            left["tokens"] = max(0, b.max_tokens - self.tokens)
        if b.max_requests is not None:
            left["requests"] = max(0, b.max_requests - self.requests)
        return left

    def deadline_reached(self) -> None:
        """The deadline's timer went off: the deadline is met, unless a budget was first."""
        self._named(StopReason.DEADLINE)

    def _meet(self, budget: StopReason) -> bool:
        self._named(budget)
        return False

    def _named(self, budget: StopReason) -> StopReason:
        self._met = self._met or budget
        return budget


def _mean(values: deque[int]) -> float:
    return sum(values) / len(values) if values else 0.0


def _high(values: deque[float]) -> float:
    """A latency most rows stay under (the 90th percentile of the recent ones); 0 before any."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
