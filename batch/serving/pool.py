"""Bounded access to the hosts: at most each host's concurrency in flight on it, ever.

A request goes to a healthy host with a free slot (the one with most free slots); a host that
frees its slots sooner, a faster one, so takes more rows. A slot is held for one attempt only, so
a row sleeping before its retry frees it for others. Health is in hosts.py: a refused connection
moves the request to another host at once (it never reached a model, so it costs the row no
attempt); other failures go back to the row's retry, which then lands on a host still up. The
run stops only when no host is left for a model.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

import anyio

from batch.core.chat import Backend, ChatRequest, Completion, Usage
from batch.core.errors import Cause, FatalRunError, ModelMissing, RowFailure, Transient
from batch.core.log_events import event
from batch.serving.hosts import Host, HostPolicy, Probed
from batch.serving.limits import OVERLOAD_CAUSES, Limit, server_wait

log = logging.getLogger(__name__)


class Meter(Protocol):
    """Sees each request as it goes (and may stop it: the run's budgets) and as it returns."""

    def sending(self) -> None: ...

    def replied(self, seconds: float, usage: Usage) -> None: ...


class HostPool:
    """A `Backend` over many: the labeller sees one backend, whatever the hosts."""

    def __init__(
        self,
        backends: Sequence[Backend],
        concurrency: int | Sequence[int],
        policy: HostPolicy | None = None,
        limits: Sequence[Limit | None] = (),
        meter: Meter | None = None,
    ) -> None:
        """`limits`: a host's own limit (limits.py) in place of its fixed `concurrency`;
        `meter`: sees every request (the run's budgets)."""
        if not backends:
            raise ValueError("a pool needs at least one backend")
        counts = [concurrency] * len(backends) if isinstance(concurrency, int) else concurrency
        if len(counts) != len(backends):
            raise ValueError("give one concurrency per backend")
        policy = policy or HostPolicy()
        own = list(limits) or [None] * len(backends)
        self._hosts = [
            Host(b, n, policy, limit=limit)
            for b, n, limit in zip(backends, counts, own, strict=True)
        ]
        # Labellers are sized from this: the most each host may ever take.
        self.capacity = sum(h.concurrency.ceiling for h in self._hosts)
        self._waiters: deque[anyio.Event] = deque()
        self._meter = meter
        self._started = time.monotonic()

    @property
    def names(self) -> list[str]:
        return [host.name for host in self._hosts]

    @property
    def hosts(self) -> list[Host]:
        return list(self._hosts)

    def report(self) -> dict[str, dict[str, object]]:
        elapsed = time.monotonic() - self._started
        return {host.name: host.report(elapsed) for host in self._hosts}

    @property
    def name(self) -> str:
        return ", ".join(self.names)

    async def chat(self, request: ChatRequest) -> Completion:
        """Sends on a healthy host with a free slot; the completion names that host."""
        while True:
            host = await self._acquire(request.model)
            sent_at, in_flight = time.monotonic(), host.in_flight
            try:
                if self._meter is not None:
                    self._meter.sending()  # in the try: a request it stops frees its slot
                host.sending()
                completion = await host.backend.chat(request)
            except Transient as failure:
                failure.host = host.name
                if failure.cause in OVERLOAD_CAUSES:
                    host.overloaded(sent_at)
                if host.failed(failure):
                    log.warning(
                        "%s is out of rotation (%s); its rows go to the other hosts",
                        host.name,
                        failure.message,
                        extra=event("host_down", host=host.name, cause=failure.cause),
                    )
                    self._wake(everyone=True)
                if failure.cause == Cause.CONNECT:
                    continue
                raise
            except ModelMissing as missing:
                self._left_out(host, missing)
                continue
            except RowFailure as failure:  # refused: the metrics count it against the host
                failure.host = host.name
                raise
            finally:
                host.release_slot()
                self._wake(everyone=bool(host.lacks))
            host.succeeded()
            if host.replied(time.monotonic() - sent_at, in_flight, server_wait(completion)):
                self._wake(everyone=True)  # room for more than the one reply's slot
            host.served(request.model)  # after the reply counted: the family has the last word
            if self._meter is not None:
                self._meter.replied(time.monotonic() - sent_at, completion.usage)
            return replace(completion, host=host.name)

    async def aclose(self) -> None:
        for host in self._hosts:
            await host.backend.aclose()

    async def _acquire(self, model: str) -> Host:
        while True:
            candidates = [h for h in self._hosts if h.serves(model)]
            if not candidates:
                raise self._no_host_has(model)
            free = [h for h in candidates if h.free() > 0]
            if free:
                host = max(free, key=Host.free)
                host.take_slot()
                return host
            if not any(h.up for h in candidates) and all(h.lost for h in candidates):
                raise self._none_left(candidates)
            now = time.monotonic()
            due = [h for h in candidates if not h.up and not h.probing and h.next_probe <= now]
            if due:
                await self._probe(due[0])
                continue
            # A probe under way wakes everyone when it ends; other down hosts, when theirs is due.
            pending = [h.next_probe for h in candidates if not h.up and not h.probing]
            await self._wait(min(pending, default=None))

    async def _probe(self, host: Host) -> None:
        host.probe_started()
        try:
            # A backend that cannot be probed (the embedded one, fakes at the seam) is let back
            # in, and its next request tells.
            answered = await host.backend.probe() if isinstance(host.backend, Probed) else True
        except anyio.get_cancelled_exc_class():
            host.probe_dropped()
            self._wake(everyone=True)  # the probe is due again: another waiter takes it
            raise
        was_lost = host.lost
        host.probed(answered)
        if answered:
            log.warning(
                "%s answers again: back in rotation",
                host.name,
                extra=event("host_up", host=host.name),
            )
        elif host.lost and not was_lost:
            log.warning(
                "%s still fails after %d tries (%s): probing it now and then",
                host.name,
                host.unreachable_in_a_row,
                host.last_failure,
            )
        # Waiters may now send to it, see that no host is left, or wait for its next probe.
        self._wake(everyone=True)

    async def _wait(self, until: float | None) -> None:
        """Until a slot frees, a host changes state, or `until` (monotonic) comes."""
        woken = anyio.Event()
        self._waiters.append(woken)
        try:
            delay = None if until is None else max(until - time.monotonic(), 0.0)
            with anyio.move_on_after(delay):
                await woken.wait()
        except anyio.get_cancelled_exc_class():
            if woken.is_set():
                self._wake()  # the slot this waiter was woken for goes to the next one
            raise
        finally:
            if not woken.is_set():
                self._waiters.remove(woken)

    def _wake(self, *, everyone: bool = False) -> None:
        while self._waiters:
            self._waiters.popleft().set()
            if not everyone:
                return

    def _left_out(self, host: Host, missing: ModelMissing) -> None:
        if host.leave_out(missing.model) and any(h.serves(missing.model) for h in self._hosts):
            log.warning("%s; its rows go to the other hosts", missing)
        self._wake(everyone=True)

    def _no_host_has(self, model: str) -> FatalRunError:
        if len(self._hosts) == 1:
            return ModelMissing(
                f"model {model!r} is not available on {self._hosts[0].name}: pull it there "
                f"(`ollama pull {model}`) or pass another --model",
                model=model,
                host=self._hosts[0].name,
            )
        return ModelMissing(
            f"model {model!r} is not available on any of the {len(self._hosts)} hosts: "
            f"pull it (`ollama pull {model}`) or pass another --model",
            model=model,
            host=f"any of the {len(self._hosts)} hosts",
        )

    def _none_left(self, hosts: list[Host]) -> FatalRunError:
        reasons = "; ".join(
            f"{h.last_failure or h.name} after {h.unreachable_in_a_row} attempts" for h in hosts
        )
        if len(self._hosts) == 1:
            return FatalRunError(
                f"{reasons}: is Ollama running there? Start it (`ollama serve`) or point "
                "--host / OLLAMA_HOST at it"
            )
        return FatalRunError(
            f"no host is left: {reasons}. Start them again and rerun the same command to resume"
        )
