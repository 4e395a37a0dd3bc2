"""Hosts as the pool sees them: how a `--host` value names its concurrency, and each host's
health, from up to out of rotation and back.

    --host http://gpu1:11434#8     this host takes 8 requests at once; without `#N`, --concurrency
    --host http://gpu1:11434#auto  this host's limit is found as the run goes (limits.py)

A host goes out of rotation when it refuses a connection, or after `OUT_AFTER` failed requests in
a row (dropped connections, 5xx, timeouts). It is probed (`GET /`) after a backoff that doubles
with each failure, and rejoins when the probe answers. A host that could not be reached (refused
connections, failed probes) as many times in a row as the run's attempt budget, with no request
completed in between, is `lost`: still probed, at the longest backoff, but once every host is
lost the run stops. A host that answers, even with errors, is never lost: its rows fail by their
own attempts, as on a single host. A host that lacks a model is left out for that model's rows.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

from batch.core.chat import Backend
from batch.core.errors import Cause, Transient
from batch.core.log_events import event, events_log
from batch.serving.access import display_host, host_key
from batch.serving.limits import FixedLimit, Limit

OUT_AFTER = 3  # failed requests in a row that take a host out, when it still accepts connections
# Failures that say something about the host; a 429 is about the caller's quota.
NOT_THE_HOSTS_FAULT = frozenset({Cause.HTTP_429})


class HostState(StrEnum):
    """A host's health, as the summary's `by_host` and the progress line show it."""

    UP = "up"  # in rotation
    DOWN = "down"  # out of rotation, probed after a backoff
    LOST = "lost"  # could not be reached, again and again: probed at the longest backoff


@dataclass(frozen=True)
class HostSpec:
    url: str
    concurrency: int | None = None  # None: the run's --concurrency
    auto: bool = False  # `#auto`: found as the run goes, whatever --concurrency says


def parse_host(text: str) -> HostSpec:
    """`URL`, `URL#N` or `URL#auto`. A URL never needs a fragment, so `#` is free to carry
    the count."""
    url, sep, count = text.strip().rpartition("#")
    if not sep:
        return HostSpec(text.strip())
    auto = count == "auto"
    if not auto and (not count.isdigit() or not 1 <= int(count) <= 1024):
        raise ValueError(
            f"{text!r}: write a host's concurrency as URL#N with N from 1 to 1024, "
            "or URL#auto, e.g. http://gpu1:11434#8"
        )
    if not url.strip():
        raise ValueError(f"{text!r}: the URL before #{count} is missing: write URL#N")
    return HostSpec(url.strip(), None if auto else int(count), auto)


def check_host_list(hosts: Sequence[str]) -> None:
    seen: set[str] = set()
    for text in hosts:
        key = host_key(parse_host(text).url)
        if key in seen:
            raise ValueError(f"host {display_host(text)} is given twice: give it once, as URL#N")
        seen.add(key)


@runtime_checkable
class KnowsFamilies(Protocol):
    """A backend that can say which family a model it served belongs to (Ollama's /api/show)."""

    def model_family(self, model: str) -> str | None: ...


@runtime_checkable
class Probed(Protocol):
    """A backend that can tell whether its server answers, without running a model."""

    def probe(self) -> Awaitable[bool]: ...


@dataclass(frozen=True)
class HostPolicy:
    lost_after: int = 5  # failures in a row (requests and probes): the run's --max-attempts
    backoff: float = 0.5
    backoff_max: float = 10.0


@dataclass
class Host:
    """One host's health and counters; the pool tells it what happened, and only it changes
    them."""

    backend: Backend
    capacity: int
    policy: HostPolicy
    in_flight: int = 0
    up: bool = True
    failures_in_a_row: int = 0
    unreachable_in_a_row: int = 0  # refused connections and failed probes
    next_probe: float = 0.0
    probing: bool = False
    lacks: set[str] = field(default_factory=set)  # models this host does not have
    families_told: set[str] = field(default_factory=set)  # models whose family the limit knows
    last_failure: str = ""
    # Counters for the summary.
    requests: int = 0
    completed: int = 0
    failures: int = 0
    taken_out: int = 0
    reply_seconds: float = 0.0  # summed over completed requests
    limit: Limit | None = None  # None: `capacity`, fixed

    def take_slot(self) -> None:
        self.in_flight += 1

    def release_slot(self) -> None:
        self.in_flight -= 1

    def sending(self) -> None:
        """A request goes out on a slot taken."""
        self.requests += 1

    def replied(self, rtt: float, in_flight: int, wait: float | None) -> bool:
        """A completed reply's round trip, fed to the limit; True when the limit grew by it."""
        self.reply_seconds += rtt
        limit = self.concurrency.current
        self.concurrency.replied(rtt, in_flight, wait)
        if (now := self.concurrency.current) != limit:
            _limit_changed(self.name, limit, now, "replies")
        return now > limit

    def overloaded(self, sent_at: float) -> None:
        """The host said it is busy (or timed out): its limit may shrink."""
        limit = self.concurrency.current
        self.concurrency.overloaded(sent_at)
        if (now := self.concurrency.current) != limit:
            _limit_changed(self.name, limit, now, "overloaded")

    def leave_out(self, model: str) -> bool:
        """This host lacks `model`: its rows go elsewhere. True the first time it is told."""
        if model in self.lacks:
            return False
        self.lacks.add(model)
        return True

    def probe_started(self) -> None:
        self.probing = True

    def probe_dropped(self) -> None:
        """The probe was cancelled before an answer: it is due again."""
        self.probing = False

    def served(self, model: str) -> None:
        """After a reply for `model`: the limit learns the model's family, once a model."""
        if model in self.families_told or not isinstance(self.backend, KnowsFamilies):
            return
        self.families_told.add(model)
        self.concurrency.serves_family(self.backend.model_family(model))

    def __post_init__(self) -> None:
        if self.limit is None:
            self.limit = FixedLimit(self.capacity)

    @property
    def concurrency(self) -> Limit:
        assert self.limit is not None
        return self.limit

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def lost(self) -> bool:
        return not self.up and self.unreachable_in_a_row >= self.policy.lost_after

    def free(self) -> int:
        return self.concurrency.current - self.in_flight if self.up else 0

    def serves(self, model: str) -> bool:
        return model not in self.lacks

    def succeeded(self) -> None:
        self.completed += 1
        self.failures_in_a_row = self.unreachable_in_a_row = 0

    def failed(self, failure: Transient) -> bool:
        """Count a failed request; True when that took the host out of rotation."""
        self.failures += 1
        if failure.cause in NOT_THE_HOSTS_FAULT or (
            failure.cause == Cause.HTTP_503 and self.concurrency.backs_off
        ):
            return False
        self.failures_in_a_row += 1
        # Once per outage: requests already under way when it went down are refused together.
        self.unreachable_in_a_row += failure.cause == Cause.CONNECT and self.up
        self.last_failure = failure.message
        if self.up and (failure.cause == Cause.CONNECT or self.failures_in_a_row >= OUT_AFTER):
            self.up = False
            self.taken_out += 1
            self._schedule_probe()
            return True
        return False

    def probed(self, answered: bool) -> None:
        self.probing = False
        if answered:
            self.up = True  # failures in a row stay: only a completed request clears them
            self.concurrency.restart()  # it may come back as another server
        else:
            self.failures_in_a_row += 1
            self.unreachable_in_a_row += 1
            self._schedule_probe()

    def _schedule_probe(self) -> None:
        step = self.policy.backoff * 2 ** max(self.failures_in_a_row - 1, 0)
        delay = min(step, self.policy.backoff_max) + random.uniform(0, self.policy.backoff)
        self.next_probe = time.monotonic() + delay

    @property
    def state(self) -> HostState:
        if self.up:
            return HostState.UP
        return HostState.LOST if self.lost else HostState.DOWN

    def report(self, elapsed: float) -> dict[str, object]:
        return {
            "state": self.state,
            **self.concurrency.report(),
            "requests": self.requests,
            "completed": self.completed,
            "failures": self.failures,
            "taken_out": self.taken_out,
            "lacks_models": sorted(self.lacks),
            # What /api/version said, for backends that ask (None: not asked or not known).
            "server_version": getattr(self.backend, "server_version", None),
            "completed_per_s": round(self.completed / elapsed, 2) if elapsed else 0.0,
            "mean_reply_s": round(self.reply_seconds / self.completed, 4)
            if self.completed
            else None,
        }


def _limit_changed(host: str, was: int, now: int, why: str) -> None:
    fields = {"host": host, "was": was, "now": now, "why": why}
    events_log.info(
        "%s: concurrency %d -> %d", host, was, now, extra=event("limit_changed", **fields)
    )
