"""What a backend takes and gives. Limiting, retrying and metering wrap this seam."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

JsonSchema = dict[str, Any]
# Ollama's `format`: a JSON Schema, or "json" for any JSON (OpenAI's `json_object` mode).
Format = JsonSchema | Literal["json"]
TokenLogprob = tuple[str, float]  # a generated token's text and its log-probability


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    format: Format | None = None
    options: dict[str, Any] = field(default_factory=dict)
    logprobs: bool = False  # ask for each generated token's log-probability (--logprobs)


@dataclass(slots=True)
class Usage:
    """Token usage summed over the responses a row received (failed attempts included)."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.requests += other.requests
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens

    def as_record(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }


@dataclass(frozen=True, slots=True)
class Completion:
    """One model response. `durations_ns` uses Ollama's names, integer nanoseconds.

    `context_length`: the context the server ran this request with, when the backend knows it;
    a prompt that used all of it was likely cut short by the server. `host`: which host
    answered, set by the host pool.
    """

    content: str
    done_reason: str | None
    usage: Usage
    durations_ns: dict[str, int] = field(default_factory=dict)
    context_length: int | None = None
    host: str | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None  # when asked for and the server gave them
    model: str | None = None  # the model that answered, as the server names it


ECHO_CHARS = 1200  # of a bad reply, echoed on a re-ask: its start and its end


def bounded_echo(reply: str, limit: int = ECHO_CHARS) -> str:
    """What a re-ask repeats of a bad reply: all of a short one; the start and end of a long
    one (a runaway reply), so that the re-ask never pushes the row's own input out of the
    model's context."""
    if len(reply) <= limit:
        return reply
    head, tail = reply[: limit * 2 // 3], reply[-(limit // 3) :]
    return f"{head}\n[... {len(reply) - len(head) - len(tail)} characters left out ...]\n{tail}"


class Backend(Protocol):
    """A model server. Raises `Transient`, `Rejected` or `FatalRunError`, nothing else."""

    @property
    def name(self) -> str:
        """How the user knows this backend: a host URL without credentials."""
        ...

    async def chat(self, request: ChatRequest) -> Completion: ...

    async def aclose(self) -> None: ...
