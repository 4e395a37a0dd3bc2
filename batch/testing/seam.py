"""Test doubles at the backend seam, like pydantic-ai's `TestModel` and `FunctionModel`: they
implement `Backend`, so the host pool and the labeller stack on them as on a real server.

    run_job(config, backends=[TestBackend()])          # schema-valid replies, no server
    run_job(config, backends=[FunctionBackend(reply)])  # replies (or failures) you script

Neither needs aiohttp: they run wherever `batch` runs.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel

from batch.core.chat import ChatRequest, Completion, Usage
from batch.testing.schema_instance import WORDS, compile_schema, schema_key

Reply = Callable[[ChatRequest], Completion | Exception]


def completion(
    content: str, *, done_reason: str = "stop", tokens: tuple[int, int] = (3, 2)
) -> Completion:
    """A completion as a backend returns it: `tokens` is (input, output)."""
    return Completion(content, done_reason, Usage(1, *tokens), {"total_duration": 1000})


def _prompt_text(request: ChatRequest) -> str:
    users = [m.get("content", "") for m in request.messages if m.get("role") == "user"]
    return str(users[-1]) if users else ""


@dataclass(kw_only=True)
class _Recording:
    """What every double records: the requests it got, and how many were in flight at once."""

    name: str = "seam://test"
    requests: list[ChatRequest] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    gate: anyio.Event | None = None  # when set, requests wait for it

    async def _enter(self, request: ChatRequest) -> None:
        self.requests.append(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if self.gate is not None:
            await self.gate.wait()
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        pass


@dataclass
class TestBackend(_Recording):
    """Answers every request with a valid reply to its format: an instance of its JSON Schema
    (enum values and words picked by a CRC-32 of the last user message, so different prompts
    get different labels), `{"answer": <word>}` for `"json"`, or a line of text. Usage counts
    words, as the fake server does."""

    __test__ = False  # a test double, not a test class for pytest to collect

    async def chat(self, request: ChatRequest) -> Completion:
        await self._enter(request)
        try:
            text = _prompt_text(request)
            seed = zlib.crc32(text.encode())
            if isinstance(request.format, dict):
                content = compile_schema(schema_key(request.format)).instance(seed)
            elif request.format == "json":
                content = f'{{"answer":"{WORDS[seed % len(WORDS)]}"}}'
            else:
                content = "Test answer to: " + " ".join(text.split()[:8])
            words = sum(len(str(m.get("content", "")).split()) for m in request.messages)
            return completion(content, tokens=(words, len(content.split())))
        finally:
            self.in_flight -= 1


@dataclass
class FunctionBackend(_Recording):
    """Answers each request with `reply(request)`; raises it when it is an exception."""

    reply: Reply

    async def chat(self, request: ChatRequest) -> Completion:
        await self._enter(request)
        try:
            answer = self.reply(request)
        finally:
            self.in_flight -= 1
        if isinstance(answer, Exception):
            raise answer
        return answer
