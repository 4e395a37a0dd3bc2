"""Bounded access to the hosts: at most `concurrency` requests in flight per host, ever.

A slot is held for one attempt only, so a row sleeping before its retry frees it for others.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio

from batch.backends.base import Backend, ChatRequest, Completion


class HostPool:
    def __init__(self, backends: Sequence[Backend], concurrency: int) -> None:
        if not backends:
            raise ValueError("a pool needs at least one backend")
        self._slots = [(backend, anyio.CapacityLimiter(concurrency)) for backend in backends]
        self.capacity = concurrency * len(backends)

    @property
    def names(self) -> list[str]:
        return [backend.name for backend, _ in self._slots]

    async def chat(self, request: ChatRequest) -> tuple[Completion, str]:
        """Sends on the host with the most free slots; returns the completion and that host."""
        backend, limiter = max(self._slots, key=lambda slot: slot[1].available_tokens)
        async with limiter:
            return await backend.chat(request), backend.name

    async def aclose(self) -> None:
        for backend, _ in self._slots:
            await backend.aclose()
