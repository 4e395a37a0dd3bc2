"""JSON from outside the worker (input lines, model replies), read under documented caps, and
the output's lines, written as standard JSON only (RFC 8259: UTF-8, no NaN or Infinity).

- `MAX_DEPTH`: arrays and objects nested deeper are refused. Python's parser runs out of stack
  near 1,000 levels, at a depth that depends on its caller; a cap well below that is the same
  everywhere and leaves room for the schema check, which also recurses a level at a time.
- `MAX_REPLY_CHARS`: a longer reply is refused (and re-asked) before it is parsed or checked.
- Lone surrogates (`"\\ud800"` with no partner) are valid JSON escapes but not Unicode: they
  cannot be encoded as UTF-8, so they are replaced by U+FFFD, as Go's encoding/json (and so
  Ollama) reads them.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 100
MAX_REPLY_CHARS = 1 << 20

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


class Unreadable(ValueError):
    """JSON text refused for a reason its reader names; the message completes "the line …" or
    "the reply …". `feedback` is what a model is told when its reply is re-asked."""

    def __init__(self, reason: str, feedback: str) -> None:
        super().__init__(reason)
        self.feedback = feedback


def loads(text: str, *, finite: bool) -> Any:
    """`text` parsed under the caps; `finite`: NaN, ±Infinity and numbers beyond a double are
    refused, as strict JSON readers refuse them. Raises `json.JSONDecodeError` for text that is
    not JSON and `Unreadable` for JSON past the caps."""
    if _nesting_exceeds(text, MAX_DEPTH):
        raise Unreadable(
            f"is nested more than {MAX_DEPTH} levels deep (arrays and objects)",
            "That JSON is nested far too deeply. Reply with a flat JSON object for the schema.",
        )
    try:
        if finite:
            return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
        return json.loads(text)
    except (json.JSONDecodeError, Unreadable):
        raise
    except RecursionError:  # past the cap's guess (a caller deep in the stack): same answer
        raise Unreadable("is nested too deeply to read", "Reply with a flat JSON object.") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise Unreadable(f"cannot be read: {exc}", "Reply with JSON of ordinary numbers.") from None


def _nesting_exceeds(text: str, limit: int) -> bool:
    if text.count("[") + text.count("{") <= limit:  # most texts: no scan needed
        return False
    depth = 0
    for bracket in _BRACKET.findall(_STRING.sub("", text)):  # brackets outside strings
        depth += 1 if bracket in "[{" else -1
        if depth > limit:
            return True
    return False


def _refuse_constant(name: str) -> Any:
    raise Unreadable(
        f"is not JSON: it holds {name}, which JSON has no way to write",
        f"{name} is not JSON. Reply again with a number or null in its place.",
    )


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise Unreadable(
            f"is not JSON a reader can use: the number {literal[:40]} is beyond a double",
            f"{literal[:40]} is out of range. Reply again with an ordinary number.",
        )
    return value


def may_hold_lone_surrogates(raw: bytes) -> bool:
    """False when `raw` surely holds none: they come only from `\\uD800`-`\\uDFFF` escapes."""
    return b"\\ud" in raw or b"\\uD" in raw


def has_lone_surrogate(text: str) -> bool:
    return _LONE_SURROGATE.search(text) is not None


def without_lone_surrogates(value: Any) -> Any:
    """`value` with each lone surrogate in its strings (keys included) replaced by U+FFFD."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [without_lone_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {without_lone_surrogates(k): without_lone_surrogates(v) for k, v in value.items()}
    return value


def dumps_line(record: dict[str, Any]) -> bytes:
    """One output line: compact JSON, UTF-8, newline-terminated. Raises `ValueError` for a
    value JSON cannot carry (NaN, ±Infinity); a lone surrogate becomes U+FFFD."""
    text = json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        return (text + "\n").encode()
    except UnicodeEncodeError:  # rare: only text with a lone surrogate pays for this
        return (_LONE_SURROGATE.sub("\ufffd", text) + "\n").encode()
