"""How many requests a host gets at once: a fixed number, or one found as the run goes.

No server says how many slots it has. What a client sees is how long replies take: while every
request is served at once, the reply time stays near the lowest seen; once requests wait in the
server's queue, the reply time rises with no gain in replies per second. The adaptive limit reads
that as TCP Vegas does: over one round (as many replies as the limit), the requests that waited
are about

    queue = in_flight x (1 - base_rtt / rtt)

and the limit keeps that between `QUEUE_LOW` and `QUEUE_HIGH`: one or two requests waiting keep
every slot busy across the round trip between two requests, and no more wait behind them.

- Start: doubling every round while nothing waits (slow start), then to the estimate of what
  fills the slots plus one.
- Then one more when nothing waits, one less when more than `QUEUE_HIGH` wait, else settled.
- 503 / 429 / a timeout: halve, once a round (the server said it is overloaded).
- `base_rtt` is the lowest reply time seen since the last re-measure. A server that gets slower
  (another client, a busier GPU) makes every reply slower, which looks like a queue; so every
  `REMEASURE_S` (and after three rounds that all look queued) the limit drops for one round below
  what fills the slots and takes that round's lowest reply time as the new base.

The clock is a parameter, so tests drive the limit with simulated time.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import median
from typing import Protocol

log = logging.getLogger(__name__)

QUEUE_LOW = 1.0  # grow while fewer requests than this wait at the server
QUEUE_HIGH = 1.5  # shrink while more than this wait
REMEASURE_S = 20.0  # at least this often, the base reply time is measured again
QUEUED_ROUNDS = 3  # rounds in a row that look queued before the base is re-measured early
SETTLED_ROUNDS = 20  # the settled concurrency: the median limit over this many rounds
DEFAULT_CEILING = 64  # --max-concurrency: past it, a server is better told with #N
OVERLOAD_CAUSES = frozenset({"http_503", "http_429", "timeout"})
# Ollama runs these model families with one slot whatever OLLAMA_NUM_PARALLEL says (server/
# sched.go, Scheduler.load: "not safe with num_parallel > 1"), and embedding models too. The
# family is `details.family` of /api/show. The hook: once a backend reports the family of the
# model it serves, it calls `AdaptiveLimit.serves_family`, and a one-slot host starts at one.
SINGLE_SLOT_FAMILIES = frozenset(
    {
        "mllama",
        "qwen3vl",
        "qwen3vlmoe",
        "qwen35",
        "qwen35moe",
        "qwen3next",
        "lfm2",
        "lfm2moe",
        "nemotron_h",
        "nemotron_h_moe",
        "nemotron_h_omni",
    }
)


def single_slot(family: str | None) -> bool:
    return family in SINGLE_SLOT_FAMILIES


class Limit(Protocol):
    """What the host pool asks of a host's limit."""

    @property
    def backs_off(self) -> bool:
        """Whether a 503 is the limit's to answer (by halving) rather than a sign that the host
        is down: until it is down to one request, a busy server has room to be spared."""
        ...

    @property
    def current(self) -> int: ...

    @property
    def ceiling(self) -> int: ...

    def replied(self, rtt: float, in_flight: int) -> None: ...

    def overloaded(self, sent_at: float) -> None: ...

    def restart(self) -> None: ...

    def report(self) -> dict[str, object]: ...


@dataclass
class FixedLimit:
    """`-c N` or `URL#N`: N, always."""

    current: int

    @property
    def backs_off(self) -> bool:
        return False

    @property
    def ceiling(self) -> int:
        return self.current

    def replied(self, rtt: float, in_flight: int) -> None:
        pass

    def overloaded(self, sent_at: float) -> None:
        pass

    def restart(self) -> None:
        pass

    def report(self) -> dict[str, object]:
        return {"concurrency": self.current, "concurrency_mode": "fixed"}


@dataclass
class _Round:
    """Replies to requests sent since `start`: a round measures one limit, not the last."""

    start: float
    rtts: list[float] = field(default_factory=list)
    in_flight: list[int] = field(default_factory=list)

    def add(self, rtt: float, in_flight: int) -> None:
        self.rtts.append(rtt)
        self.in_flight.append(in_flight)

    def __len__(self) -> int:
        return len(self.rtts)

    def rtt(self) -> float:
        """The mean, not a quantile: requests run in waves, some waiting a whole reply and some
        none, and by Little's law the mean is what the in-flight count and the throughput
        imply. Less the slowest tenth: a busy client's own delays land there."""
        kept = sorted(self.rtts)[: max(1, len(self.rtts) - len(self.rtts) // 10)]
        return sum(kept) / len(kept)


class AdaptiveLimit:
    """`--concurrency auto`: see the module's doc."""

    def __init__(
        self,
        ceiling: int = DEFAULT_CEILING,
        *,
        initial: int = 4,
        slow_start: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ceiling = max(1, ceiling)
        self._limit = min(max(1, initial), self._ceiling)
        self._slow_start = slow_start
        self._clock = clock
        self._base: float | None = None
        self._round = _Round(clock())
        self._queued_rounds = 0
        self._last_cut = float("-inf")
        self._measured_at = clock()
        self._remeasure: tuple[float, int] | None = None  # (started, the limit to go back to)
        self._history: deque[int] = deque(maxlen=SETTLED_ROUNDS)
        self.queue_estimate = 0.0
        self.overloads = 0

    @property
    def current(self) -> int:
        if self._remeasure is not None:
            return _below_the_slots(self._remeasure[1])
        return self._limit

    @property
    def ceiling(self) -> int:
        return self._ceiling

    @property
    def backs_off(self) -> bool:
        return self._limit > 1

    @property
    def settled(self) -> int | None:
        """The limit it held over the last rounds; None while it is still growing."""
        if self._slow_start or len(self._history) < 3:
            return None
        return round(median(self._history))

    def replied(self, rtt: float, in_flight: int) -> None:
        """A reply after `rtt` seconds, to a request sent with `in_flight` requests on the host
        (itself included)."""
        now = self._clock()
        if self._base is None or rtt < self._base:
            self._base = rtt
        if now - rtt < self._round.start:
            return
        if self._remeasure is not None:
            self._remeasuring(now, rtt, in_flight)
            return
        self._round.add(rtt, in_flight)
        if len(self._round) >= max(1, self._limit // 2):
            self._end_round(now)

    def overloaded(self, sent_at: float) -> None:
        """A 503, 429 or timeout for a request sent at `sent_at` (this clock): halve, once for
        all the requests that were already in flight at the last cut."""
        self.overloads += 1
        if sent_at < self._last_cut:
            return
        self._last_cut = self._clock()
        if self._remeasure is not None:
            self._limit = self._remeasure[1]
            self._remeasure = None
        self._limit = max(1, self._limit // 2)
        self._slow_start = False
        self._round = _Round(self._last_cut)

    def serves_family(self, family: str | None) -> None:
        """A model family Ollama runs with one slot: start at one, and grow only by the
        queue estimate, one at a time (no doubling)."""
        if single_slot(family) and self._slow_start:
            self._limit, self._slow_start = 1, False

    def restart(self) -> None:
        """The host came back from a failure: it may not be the server it was. Grow again from
        half the limit, and measure the base anew."""
        self._limit = max(1, self._limit // 2)
        self._slow_start = True
        self._base = None
        self._remeasure = None
        self._round = _Round(self._clock())

    def report(self) -> dict[str, object]:
        return {
            "concurrency": self.current,
            "concurrency_mode": "auto",
            "settled_concurrency": self.settled,
            "max_concurrency": self._ceiling,
            "queue_estimate": round(self.queue_estimate, 2),
            "overloads": self.overloads,
        }

    def _end_round(self, now: float) -> None:
        sample, self._round = self._round, _Round(now)
        assert self._base is not None
        in_flight = sum(sample.in_flight) / len(sample)
        queue = self.queue_estimate = in_flight * (1.0 - self._base / sample.rtt())
        # Grow only when the limit was what held the requests back, not a lack of rows.
        held_back = max(sample.in_flight) >= self._limit
        if self._slow_start:
            if queue < QUEUE_LOW:
                if held_back:
                    self._limit = min(self._limit * 2, self._ceiling)
            elif self._queued_rounds or queue > 2 * QUEUE_HIGH:  # twice, or clearly: not noise
                # To what fills the slots plus one; not below the last limit with nothing queued.
                self._slow_start = False
                fill = round(max(sample.in_flight) - queue + QUEUE_LOW)
                self._limit = self._bounded(max(fill, self._limit // 2))
        elif queue < QUEUE_LOW:
            if held_back:
                self._limit = self._bounded(self._limit + 1)
        elif queue > QUEUE_HIGH:
            self._limit = self._bounded(self._limit - 1)
        log.debug(
            "round of %d replies: in flight %.1f, reply %.3fs, base %.3fs, queue %.2f -> limit %d",
            len(sample),
            in_flight,
            sample.rtt(),
            self._base,
            queue,
            self._limit,
        )
        self._queued_rounds = self._queued_rounds + 1 if queue >= QUEUE_LOW else 0
        if not self._slow_start:
            self._history.append(self._limit)
        due = now - self._measured_at >= max(REMEASURE_S, 8 * self._base)
        if due or (self._queued_rounds >= QUEUED_ROUNDS and queue > QUEUE_HIGH):
            self._remeasure = (now, self._limit)
            self._round = _Round(now)

    def _remeasuring(self, now: float, rtt: float, in_flight: int) -> None:
        """Only requests sent once the drop took effect tell the base without a queue."""
        limit = self._remeasure[1] if self._remeasure else self._limit
        if in_flight > _below_the_slots(limit):
            return
        self._round.add(rtt, in_flight)
        if len(self._round) >= min(_below_the_slots(limit), 3):
            self._base = min(self._round.rtts)
            self._remeasure, self._round = None, _Round(now)
            self._limit, self._measured_at, self._queued_rounds = limit, now, 0

    def _bounded(self, limit: int) -> int:
        return min(max(1, limit), self._ceiling)


def _below_the_slots(limit: int) -> int:
    """A limit that leaves none waiting when `limit` kept one or two waiting."""
    return max(1, min(limit * 3 // 4, limit - 2))
