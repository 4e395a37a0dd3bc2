"""Ollama's request options, by name and JSON type, as its server reads them (`api/types.go`,
`Options`, `Runner` and `FromMap`).

An option of the wrong type is a 500 (`option "stop" must be of type array`) on every request;
an unknown name is dropped with only a warning in the server's log, so a typo labels with the
default. Both are refused here before the first row. `RELOAD_OPTIONS` are the `Runner` fields:
a request whose values differ from the loaded model's reloads it (`server/sched.go`,
`needsReload`).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "KNOWN_OPTIONS",
    "OPTION_ERROR",
    "RELOAD_OPTIONS",
    "RETIRED_OPTIONS",
    "checked_options",
    "option_problem",
    "options_problem",
    "reload_options",
]

# name -> the type FromMap wants, in its own words.
KNOWN_OPTIONS: dict[str, str] = {
    "num_keep": "integer",
    "seed": "integer",
    "num_predict": "integer",
    "top_k": "integer",
    "top_p": "float32",
    "min_p": "float32",
    "typical_p": "float32",
    "repeat_last_n": "integer",
    "temperature": "float32",
    "repeat_penalty": "float32",
    "presence_penalty": "float32",
    "frequency_penalty": "float32",
    "stop": "array",
    "num_ctx": "integer",
    "num_batch": "integer",
    "num_gpu": "integer",
    "main_gpu": "integer",
    "use_mmap": "boolean",
    "num_thread": "integer",
    "draft_num_predict": "integer",
}
# Known to older servers (v0.5), dropped since: accepted, but a current server ignores them.
RETIRED_OPTIONS: dict[str, str] = {
    "tfs_z": "float32",
    "mirostat": "integer",
    "mirostat_tau": "float32",
    "mirostat_eta": "float32",
    "penalize_newline": "boolean",
    "low_vram": "boolean",
    "f16_kv": "boolean",
    "logits_all": "boolean",
    "vocab_only": "boolean",
    "use_mlock": "boolean",
}
RELOAD_OPTIONS = frozenset(
    {"num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread", "draft_num_predict"}
)
# The 500 a server answers for an option of the wrong type.
OPTION_ERROR = re.compile(r'option "([^"]+)" must be of (?:type \w+|an array of strings)')


def _fits(kind: str, value: Any) -> bool:
    if isinstance(value, bool):
        return kind == "boolean"
    if kind == "integer" or kind == "float32":
        # JSON numbers: Go reads all as float64. NaN and Infinity are no JSON at all.
        return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
    if kind == "boolean":
        return False
    if kind == "array":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, str)


def _example(kind: str) -> str:
    return {
        "integer": "a whole number, e.g. 8192",
        "float32": "a number, e.g. 0.7",
        "boolean": "true or false",
        "array": 'a list of strings, e.g. ["END"] (--option \'stop=["END"]\')',
    }.get(kind, "a string")


def option_problem(name: str, value: Any) -> str | None:
    """What is wrong with one option, in words that say what to write instead; None if fine."""
    kind = KNOWN_OPTIONS.get(name) or RETIRED_OPTIONS.get(name)
    if kind is None:
        close = difflib.get_close_matches(name, [*KNOWN_OPTIONS, *RETIRED_OPTIONS], n=1)
        hint = f"did you mean {close[0]!r}?" if close else "see Ollama's docs for the options"
        return (
            f"option {name!r} is not one Ollama knows: it would drop it silently and use "
            f"its default; {hint}"
        )
    if value is not None and not _fits(kind, value):
        return f"option {name!r} must be {_example(kind)}, not {value!r}"
    return None


def options_problem(options: Mapping[str, Any]) -> str | None:
    """The first problem among `options`, or None."""
    for name, value in options.items():
        if (problem := option_problem(name, value)) is not None:
            return problem
    return None


def checked_options(options: dict[str, Any]) -> dict[str, Any]:
    """`options` unchanged, or ValueError naming the first bad one (for config validation)."""
    if (problem := options_problem(options)) is not None:
        raise ValueError(problem)
    return options


def reload_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options that decide how a model is loaded: changing them reloads it."""
    return {k: v for k, v in options.items() if k in RELOAD_OPTIONS}
