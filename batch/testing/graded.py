"""Fake models of known accuracy against a gold file: a `FakeOllama.responder` for panels.

    fake.responder = Graded.from_file(gold, {"good": 1.0, "fair": 0.75, "poor": 0.25})

A request is matched to its gold row by the row's text (the gold row's `key` field) found in
the prompt text. Of the gold rows, a model answers exactly `round(accuracy * rows)` right: the
first ones in an order drawn from the model's name and the request's `seed` option, so each
model (and each sample of it) is right on its own rows. A right answer is the gold row's
values; a wrong one gives each categorical field of the request's schema another allowed value.
A request that matches no gold row gets the fake's usual schema instance.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from batch.core.categories import categorical_fields, value_at, value_key
from batch.testing.schema_instance import compile_schema, schema_key

NOT_OUTPUT = frozenset({"id", "custom_id", "expected"})


class Graded:
    def __init__(
        self, gold: Mapping[str, dict[str, Any]], accuracy: Mapping[str, float], *, key: str
    ) -> None:
        self.gold = dict(gold)  # the row's text -> its right answer
        self.accuracy = dict(accuracy)
        self.key = key
        self._right: dict[tuple[str, Any], set[str]] = {}

    @classmethod
    def from_file(cls, path: Path, accuracy: Mapping[str, float], *, key: str = "text") -> Graded:
        """A gold file of JSON lines: `key` holds the row's text; `expected`, or the other
        fields but the id, its right answer."""
        gold = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                expected = row.get("expected")
                if not isinstance(expected, dict):
                    expected = {k: v for k, v in row.items() if k not in NOT_OUTPUT | {key}}
                gold[str(row[key])] = expected
        return cls(gold, accuracy, key=key)

    def right(self, model: str, seed: Any) -> set[str]:
        """The texts `model` answers right with this seed."""
        found = self._right.get((model, seed))
        if found is None:
            drawn = sorted(self.gold, key=lambda text: _draw(model, seed, text))
            share = self.accuracy.get(model.removesuffix(":latest"), 1.0)
            found = self._right[(model, seed)] = set(drawn[: round(share * len(drawn))])
        return found

    def __call__(self, body: dict[str, Any]) -> str:
        text = _prompt(body)
        schema = body.get("format")
        match = next((t for t in self.gold if t == text), None) or next(
            (t for t in self.gold if t in text), None
        )
        if not isinstance(schema, dict):
            return f"Fake answer to: {text}"
        if match is None:
            return compile_schema(schema_key(schema)).instance(zlib.crc32(text.encode()))
        model = str(body.get("model"))
        seed = (body.get("options") or {}).get("seed")
        answer = json.loads(json.dumps(self.gold[match]))
        if match not in self.right(model, seed):
            for path, allowed in categorical_fields(schema).items():
                _swap(answer, path, allowed, _draw(model, seed, match))
        return json.dumps(answer, separators=(",", ":"))


def _prompt(body: dict[str, Any]) -> str:
    users = [m for m in body.get("messages") or [] if m.get("role") == "user"]
    return str(users[-1].get("content") or "") if users else str(body.get("prompt") or "")


def _draw(model: str, seed: Any, text: str) -> int:
    return zlib.crc32(f"{model}\n{seed}\n{text}".encode())


def _swap(answer: Any, path: tuple[str, ...], allowed: tuple[Any, ...], draw: int) -> None:
    """Puts another allowed value at `path`: a wrong answer, the same one for the same draw."""
    found, value = value_at(answer, path)
    others = [v for v in allowed if not found or value_key(v) != value_key(value)]
    if not others:
        return
    for part in path[:-1]:
        answer = answer.setdefault(part, {})
    answer[path[-1]] = others[draw % len(others)]
