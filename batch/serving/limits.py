"""How many requests a host gets at once: a fixed number, or one found as the run goes.

No server says how many slots it has. What a client sees is how long requests wait for one.
Ollama says it in every reply: `total_duration` runs from the request's arrival, so what it holds
beyond the load, the prompt and the generation is the wait for a slot. Over one round (as many
replies as half the limit), by Little's law, the requests waiting at the server are about

    queue = replies a second x mean wait = in_flight x mean wait / mean reply time

and the limit keeps that between `QUEUE_LOW` and `QUEUE_HIGH`: one or two requests waiting keep
every slot busy across the round trip between two requests, and no more wait behind them. A
client slowed by its own work (a busy machine) adds to its reply times, not to the server's wait,
so it is not mistaken for a queue. Replies without timings (a proxy that strips them) are read
as TCP Vegas reads round trips: while every request is served at once, replies take about as long
as the fastest seen, and once some wait they take longer, so

    queue = in_flight x (1 - fastest reply / mean reply)

- Start: doubling every round while nothing waits (slow start), then to the estimate of what
  fills the slots plus one.
- Then one more when nothing waits, one less when more than `QUEUE_HIGH` wait, else settled.
- 503 / 429 / a timeout: halve, once a round (the server said it is overloaded).
- Without timings, the fastest reply is the lowest seen since the last re-measure. A server that
  gets slower (another client, a busier GPU) makes every reply slower, which looks like a queue;
  so every `REMEASURE_S` (and after three rounds that all look queued) the limit drops for one
  round below what fills the slots and takes that round's fastest reply as the new base.

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

from batch.core.chat import Completion
from batch.core.errors import Cause
from batch.serving.model_check import ONE_SLOT_FAMILIES

log = logging.getLogger(__name__)

QUEUE_LOW = 1.0  # grow while fewer requests than this wait at the server
QUEUE_HIGH = 1.5  # shrink while more than this wait
REMEASURE_S = 20.0  # at least this often, the base reply time is measured again
QUEUED_ROUNDS = 3  # rounds in a row that look queued before the base is re-measured early
SETTLED_ROUNDS = 20  # the settled concurrency: the median limit over this many rounds
DEFAULT_CEILING = 64  # --max-concurrency: past it, a server is better told with #N
OVERLOAD_CAUSES = frozenset({Cause.HTTP_503, Cause.HTTP_429, Cause.TIMEOUT})
# Ollama runs some model families with one slot whatever OLLAMA_NUM_PARALLEL says
# (ONE_SLOT_FAMILIES, from server/sched.go, Scheduler.load). Once a backend knows the family of
# the model a host serves (`details.family` of /api/show), the pool tells the host's limit
# (`serves_family`), and a one-slot host starts at one.


def server_wait(completion: Completion) -> float | None:
    """Seconds a request waited for a slot, by the server's own clock: Ollama's total_duration
    runs from the handler's start (server/routes.go, ChatHandler), so it holds the load, the
    wait for the runner's semaphore (llm/llama_server.go, Completion) and the work; None when
    the reply has no timings (a proxy that strips them, the embedded backend)."""
    durations = completion.durations_ns
    total = durations.get("total_duration")
    work = durations.get("prompt_eval_duration"), durations.get("eval_duration")
    if not total or work[0] is None or work[1] is None:
        return None
    spent = work[0] + work[1] + durations.get("load_duration", 0)
    return max(total - spent, 0) / 1e9


def single_slot(family: str | None) -> bool:
    return family in ONE_SLOT_FAMILIES


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

    def replied(self, rtt: float, in_flight: int, wait: float | None = None) -> None: ...

    def overloaded(self, sent_at: float) -> None: ...

    def restart(self) -> None: ...

    def serves_family(self, family: str | None) -> None: ...

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

    def replied(self, rtt: float, in_flight: int, wait: float | None = None) -> None:
        pass

    def overloaded(self, sent_at: float) -> None:
        pass

    def restart(self) -> None:
        pass

    def serves_family(self, family: str | None) -> None:
        pass  # a limit the user set is kept; server_notes warns when it is above one

    def report(self) -> dict[str, object]:
        return {"concurrency": self.current, "concurrency_mode": "fixed"}


@dataclass
class _Round:
    """Replies to requests sent since `start`: a round measures one limit, not the last."""

    start: float
    rtts: list[float] = field(default_factory=list)
    in_flight: list[int] = field(default_factory=list)
    waits: list[float] | None = field(default_factory=list)  # None: some reply did not say

    def add(self, rtt: float, in_flight: int, wait: float | None = None) -> None:
        self.rtts.append(rtt)
        self.in_flight.append(in_flight)
        if self.waits is not None:
            if wait is None:
                self.waits = None
            else:
                self.waits.append(wait)

    def queue(self, base: float) -> float:
        """Requests waiting at the server, on average over the round. With the server's own
        timings, by Little's law: replies a second x the mean wait for a slot; a client slowed
        by its own work does not count. Without: Vegas's reading of the reply times."""
        in_flight = sum(self.in_flight) / len(self.in_flight)
        if self.waits:
            return in_flight * (sum(self.waits) / len(self.waits)) / (sum(self.rtts) / len(self))
        return in_flight * (1.0 - base / self.rtt())

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

    def replied(self, rtt: float, in_flight: int, wait: float | None = None) -> None:
        """A reply after `rtt` seconds, to a request sent with `in_flight` requests on the host
        (itself included); `wait`: the seconds it waited for a slot, when the server says."""
        now = self._clock()
        if self._base is None or rtt < self._base:
            self._base = rtt
        if now - rtt < self._round.start:
            return
        if self._remeasure is not None:
            self._remeasuring(now, rtt, in_flight)
            return
        self._round.add(rtt, in_flight, wait)
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
        queue = self.queue_estimate = sample.queue(self._base)
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
        stale = self._queued_rounds >= QUEUED_ROUNDS and queue > QUEUE_HIGH
        if (due or stale) and not sample.waits:  # the server's timings need no base
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
