"""A backend fake at the seam, for pipeline logic that needs no HTTP."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel

from batch.backends.base import ChatRequest, Completion, Usage

Reply = Callable[[ChatRequest], Completion | Exception]


def completion(
    content: str, *, done_reason: str = "stop", tokens: tuple[int, int] = (3, 2)
) -> Completion:
    return Completion(content, done_reason, Usage(1, *tokens), {"total_duration": 1000})


@dataclass
class ScriptedBackend:
    """Answers each request with `reply(request)`; raises it when it is an exception."""

    reply: Reply
    name: str = "seam://fake"
    requests: list[ChatRequest] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    gate: anyio.Event | None = None  # when set, requests wait for it

    async def chat(self, request: ChatRequest) -> Completion:
        self.requests.append(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            await anyio.lowlevel.checkpoint()
            answer = self.reply(request)
        finally:
            self.in_flight -= 1
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def aclose(self) -> None:
        pass
