"""Confidence per label: the probability the model gave the value it chose.

A reply's tokens come back with their log-probabilities (`--logprobs`). A field's value occupies
a span of the reply's text (inside the quotes, for a string); the tokens that spell it are those
that overlap the span, and the value's probability is exp(the sum of their log-probabilities).
A token that also spells a quote or a brace counts whole: it is the one that chose the value.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import replace

from batch.core.categories import Path, dotted
from batch.core.chat import Backend, ChatRequest, Completion, TokenLogprob

Span = tuple[int, int]  # [start, end) in the reply's characters
DIGITS = 4  # significant: a value the model found unlikely still shows how unlikely

_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")
MAX_DEPTH = 8


class AskingLogprobs:
    """A backend whose every request asks for token log-probabilities."""

    def __init__(self, inner: Backend) -> None:
        self._inner = inner

    @property
    def name(self) -> str:
        return self._inner.name

    async def chat(self, request: ChatRequest) -> Completion:
        return await self._inner.chat(replace(request, logprobs=True))

    async def aclose(self) -> None:
        await self._inner.aclose()


def field_confidence(
    content: str, tokens: Iterable[TokenLogprob], paths: Iterable[Path]
) -> dict[str, float] | None:
    """Dotted path -> probability of its value, for the `paths` found in the reply; None when
    the tokens do not spell the reply (nothing can be mapped)."""
    placed = _placed(content, tokens)
    if placed is None:
        return None
    confidence: dict[str, float] = {}
    for path, (start, end) in value_spans(content, paths).items():
        if start == end:  # an empty string: the tokens of its quotes chose it
            start, end = start - 1, end + 1
        chosen = [
            lp for s, e, lp in placed if (s < end and e > start) or (s == e and start <= s < end)
        ]
        if chosen:
            confidence[dotted(path)] = float(f"{math.exp(sum(chosen)):.{DIGITS}g}")
    return confidence


def _placed(content: str, tokens: Iterable[TokenLogprob]) -> list[tuple[int, int, float]] | None:
    """Each token's span in `content`. The tokens may spell more than the reply (a thinking
    model's reasoning comes first): the reply is their text's last occurrence of it."""
    tokens = list(tokens)
    spelled = "".join(text for text, _ in tokens)
    shift = 0 if spelled == content else spelled.rfind(content)
    if shift < 0 or not tokens:
        return None
    placed = []
    at = -shift
    for text, logprob in tokens:
        placed.append((at, at + len(text), logprob))
        at += len(text)
    return placed


def value_spans(content: str, paths: Iterable[Path]) -> dict[Path, Span]:
    """Where each path's value is written in a JSON object reply; paths absent are left out,
    and a reply that is not a JSON object gives none."""
    wanted = set(paths)
    spans: dict[Path, Span] = {}
    start = _SPACE.match(content, 0)
    assert start is not None
    if not content.startswith("{", start.end()):
        return spans
    try:
        _object(content, start.end(), (), wanted, spans)
    except (ValueError, IndexError):
        return {}
    return spans


def _object(text: str, pos: int, prefix: Path, wanted: set[Path], spans: dict[Path, Span]) -> int:
    """Reads the object at `text[pos] == "{"`, noting wanted spans; returns the end."""
    pos = _skip(text, pos + 1)
    if text[pos] == "}":
        return pos + 1
    while True:
        key, pos = _DECODER.raw_decode(text, pos)
        pos = _skip(text, pos)
        if text[pos] != ":":
            raise ValueError("no colon after a key")
        pos = _skip(text, pos + 1)
        path = (*prefix, str(key))
        if text[pos] == "{" and len(path) < MAX_DEPTH:
            end = _object(text, pos, path, wanted, spans)
        else:
            _, end = _DECODER.raw_decode(text, pos)
        if path in wanted:
            spans[path] = (pos + 1, end - 1) if text[pos] == '"' else (pos, end)
        pos = _skip(text, end)
        if text[pos] == "}":
            return pos + 1
        if text[pos] != ",":
            raise ValueError("no comma between members")
        pos = _skip(text, pos + 1)


def _skip(text: str, pos: int) -> int:
    match = _SPACE.match(text, pos)
    assert match is not None
    return match.end()
