"""A server with S slots and a FIFO queue, simulated on a fake clock, driving a limit.

The client keeps `limit.current` requests in flight; each takes `transit` seconds each way and
`service` seconds in a slot. With `max_queue`, a request that finds that many waiting gets a 503.
With `timings`, each reply says how long it waited for a slot, as Ollama's durations do; the
client adds `client_delay` (its own busy event loop) to every reply time.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field

from batch.serving.limits import AdaptiveLimit


@dataclass
class Server:
    slots: int
    service: float
    transit: float = 0.005
    max_queue: int | None = None
    timings: bool = False
    client_delay: float = 0.0
    busy: int = 0
    waiting: deque[tuple[float, int, float]] = field(default_factory=deque)


@dataclass
class Simulation:
    server: Server
    now: float = 0.0
    limit: AdaptiveLimit | None = None
    in_flight: int = 0
    replies: int = 0
    rejected: int = 0
    queue_area: float = 0.0  # integral of the server's queue length over time
    limits: list[tuple[float, int]] = field(default_factory=list)
    _events: list[tuple[float, int, str, float, int, float]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def clock(self) -> float:
        return self.now

    def make_limit(self, **kwargs: object) -> AdaptiveLimit:
        self.limit = AdaptiveLimit(clock=self.clock, **kwargs)  # type: ignore[arg-type]
        return self.limit

    def _at(self, when: float, kind: str, sent: float, in_flight: int, wait: float = 0.0) -> None:
        heapq.heappush(self._events, (when, next(self._seq), kind, sent, in_flight, wait))

    def _fill(self) -> None:
        assert self.limit is not None
        while self.in_flight < self.limit.current:
            self.in_flight += 1
            self._at(self.now + self.server.transit, "arrive", self.now, self.in_flight)

    def run(self, until: float) -> None:
        assert self.limit is not None
        self._fill()
        while self._events and self._events[0][0] <= until:
            when, _, kind, sent, in_flight, wait = heapq.heappop(self._events)
            self.queue_area += len(self.server.waiting) * (when - self.now)
            self.now = when
            self._handle(kind, sent, in_flight, wait)
            self.limits.append((self.now, self.limit.current))
            self._fill()
        self.queue_area += len(self.server.waiting) * (until - self.now)
        self.now = until

    def _handle(self, kind: str, sent: float, in_flight: int, wait: float) -> None:
        server, limit = self.server, self.limit
        assert limit is not None
        if kind == "arrive":
            if server.busy < server.slots:
                server.busy += 1
                self._at(self.now + server.service, "done", sent, in_flight)
            elif server.max_queue is not None and len(server.waiting) >= server.max_queue:
                self._at(self.now + server.transit, "busy", sent, in_flight)
            else:
                server.waiting.append((sent, in_flight, self.now))
        elif kind == "done":
            self._at(
                self.now + server.transit + server.client_delay, "reply", sent, in_flight, wait
            )
            if server.waiting:
                next_sent, next_in_flight, arrived = server.waiting.popleft()
                waited = self.now - arrived
                self._at(self.now + server.service, "done", next_sent, next_in_flight, waited)
            else:
                server.busy -= 1
        elif kind == "reply":
            self.in_flight -= 1
            self.replies += 1
            limit.replied(self.now - sent, in_flight, wait if self.server.timings else None)
        else:
            self.in_flight -= 1
            self.rejected += 1
            limit.overloaded(sent)

    def limit_at(self, moment: float) -> int:
        value = 1
        for when, current in self.limits:
            if when > moment:
                break
            value = current
        return value
