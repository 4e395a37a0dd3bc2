"""Deterministic JSON instances for a JSON Schema, as the fake Ollama server's "model" output.

Covers what pydantic's `model_json_schema()` emits and typical hand-written label schemas:
`type` (also as a list), `properties`/`required`, `enum`, `const`, `$ref` (local JSON pointers,
recursion included), `anyOf`/`oneOf` (first non-null branch), `allOf` (first branch), `items`,
`prefixItems`, `minItems`/`maxItems`, `minLength`/`maxLength`, numeric bounds and common string
`format`s. `pattern` and `multipleOf` are not honoured.

A schema is compiled once into a tree of closures and cached by its JSON text, so a request costs
one `json.dumps` of the format plus walking the closures.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["CompiledSchema", "SchemaError", "compile_schema", "schema_key"]

# (seed, depth) -> value. `seed` varies the choices by prompt; `depth` counts hops through
# recursive `$ref`s.
_Gen = Callable[[int, int], Any]

WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")

# Past this many recursive hops, optional parts (nullable branches, optional properties, arrays
# without minItems) are left out so recursive models terminate.
_SOFT_DEPTH = 2
# A schema that still recurses here has no finite instance (e.g. a required self-reference).
_HARD_DEPTH = 64

_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "12:00:00",
    "duration": "P1D",
    "email": "user@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
    "hostname": "example.com",
}

_JSON_TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")


class SchemaError(ValueError):
    """The fake cannot produce an instance of this schema (unsupported or unsatisfiable)."""


@dataclass(frozen=True, slots=True)
class CompiledSchema:
    """What the fake derives from one schema. Both texts are compact JSON."""

    _gen: _Gen
    violation: str
    """Valid JSON that does not conform: missing required keys or the wrong type."""

    def instance(self, seed: int) -> str:
        """A conforming instance; different seeds pick different enum values, words..."""
        return json.dumps(self._gen(seed, 0), separators=(",", ":"), ensure_ascii=False)


def schema_key(schema: Mapping[str, Any]) -> str:
    """The cache key of a schema: its compact JSON text (clients send the same text each time)."""
    return json.dumps(schema, separators=(",", ":"))


@functools.lru_cache(maxsize=256)
def compile_schema(schema_json: str) -> CompiledSchema:
    """Compile a schema given as JSON text. Raises SchemaError."""
    root = json.loads(schema_json)
    if not isinstance(root, dict):
        raise SchemaError("a schema must be a JSON object")
    compiler = _Compiler(root)
    compiled = CompiledSchema(compiler.compile(root), _violation(compiler, root))
    compiled.instance(0)  # surface an unsatisfiable recursion now, not on some later request
    return compiled


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class _Compiler:
    def __init__(self, root: dict[str, Any]) -> None:
        self._root = root
        self._refs: dict[str, _Gen] = {}
        self._active: set[str] = set()
        self._recursive: set[str] = set()
        self._salt = 0

    def _next_salt(self) -> int:
        # Each choice point gets its own offset, so sibling enums do not move in lockstep.
        salt = self._salt
        self._salt += 1
        return salt

    def resolve(self, ref: str) -> Any:
        if not ref.startswith("#"):
            raise SchemaError(f"only local $ref is supported, got {ref!r}")
        node: Any = self._root
        for raw in ref[1:].split("/")[1:]:
            part = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise SchemaError(f"unresolvable $ref {ref!r}")
        return node

    def compile(self, node: Any) -> _Gen:
        if node is True or node == {}:
            return self._string({})
        if not isinstance(node, dict):
            raise SchemaError(f"not a schema: {_dumps(node)[:80]}")
        if "$ref" in node:
            return self._ref(node["$ref"])
        if "const" in node:
            const = node["const"]
            return lambda seed, depth: const
        if "enum" in node:
            return self._enum(node["enum"])
        for key in ("anyOf", "oneOf"):
            if key in node:
                return self._any_of(node[key])
        if "allOf" in node:
            branches = node["allOf"]
            if not isinstance(branches, list) or not branches:
                raise SchemaError("allOf must be a non-empty list")
            return self.compile(branches[0])
        kind = _first_type(node)
        if kind == "object":
            return self._object(node)
        if kind == "array":
            return self._array(node)
        if kind == "integer":
            return self._integer(node)
        if kind == "number":
            return self._number(node)
        if kind == "boolean":
            salt = self._next_salt()
            return lambda seed, depth: (seed + salt) % 2 == 0
        if kind == "null":
            return lambda seed, depth: None
        return self._string(node)

    def _ref(self, ref: Any) -> _Gen:
        if not isinstance(ref, str):
            raise SchemaError("$ref must be a string")
        refs, recursive = self._refs, self._recursive
        if ref in self._active:
            recursive.add(ref)  # a cycle: compiled once, entered again at generation time
        elif ref not in refs:
            self._active.add(ref)
            refs[ref] = self.compile(self.resolve(ref))
            self._active.discard(ref)

        def gen(seed: int, depth: int) -> Any:
            # Only hops through a cycle count, so plain nesting keeps every property.
            if ref not in recursive:
                return refs[ref](seed, depth)
            if depth >= _HARD_DEPTH:
                raise SchemaError("schema recursion has no finite instance")
            return refs[ref](seed, depth + 1)

        return gen

    def _enum(self, values: Any) -> _Gen:
        if not isinstance(values, list) or not values:
            raise SchemaError("enum must be a non-empty list")
        choices = tuple(values)
        salt = self._next_salt()
        return lambda seed, depth: choices[(seed + salt) % len(choices)]

    def _any_of(self, branches: Any) -> _Gen:
        if not isinstance(branches, list) or not branches:
            raise SchemaError("anyOf/oneOf must be a non-empty list")
        non_null = [b for b in branches if not _is_null_schema(b)]
        if not non_null:
            return lambda seed, depth: None
        first = self.compile(non_null[0])
        if len(non_null) == len(branches):
            return first
        # Nullable: null only once deep enough, which ends recursion through optional links.
        return lambda seed, depth: None if depth > _SOFT_DEPTH else first(seed, depth)

    def _object(self, node: dict[str, Any]) -> _Gen:
        properties = node.get("properties") or {}
        required = set(node.get("required") or ())
        fields = [(name, self.compile(sub), name in required) for name, sub in properties.items()]
        extra = [(name, self._string({})) for name in sorted(required - properties.keys())]

        def gen(seed: int, depth: int) -> Any:
            shallow = depth <= _SOFT_DEPTH
            out = {name: g(seed, depth) for name, g, req in fields if req or shallow}
            for name, g in extra:
                out[name] = g(seed, depth)
            return out

        return gen

    def _array(self, node: dict[str, Any]) -> _Gen:
        prefix = [self.compile(sub) for sub in node.get("prefixItems") or ()]
        items = node.get("items")
        # `items: false` (pydantic tuples) forbids anything past prefixItems.
        item = None if items is None or items is False else self.compile(items)
        min_items = int(node.get("minItems", 0))
        max_items = node.get("maxItems")
        wanted = max(min_items, 1, len(prefix))
        if max_items is not None:
            wanted = min(wanted, int(max_items))
        if wanted > len(prefix) and item is None:
            if min_items > len(prefix):
                raise SchemaError("array needs more items than prefixItems and has no items")
            wanted = len(prefix)

        def gen(seed: int, depth: int) -> Any:
            count = wanted if depth <= _SOFT_DEPTH else max(min_items, len(prefix))
            # Offset the seed per item so enum items differ (helps with uniqueItems).
            out = [g(seed + i, depth) for i, g in enumerate(prefix[:count])]
            if item is not None:
                out.extend(item(seed + i, depth) for i in range(len(out), count))
            return out

        return gen

    def _integer(self, node: dict[str, Any]) -> _Gen:
        lo, hi = _integer_bounds(node)
        if lo is None:
            lo = 0 if hi is None else min(0, hi - 9)
        if hi is None:
            hi = lo + 9
        if hi < lo:
            raise SchemaError("integer bounds admit no value")
        span = hi - lo + 1
        salt = self._next_salt()
        return lambda seed, depth: lo + (seed + salt) % span

    def _number(self, node: dict[str, Any]) -> _Gen:
        low, high = _bounds(node)
        if low is not None and high is not None and high < low:
            raise SchemaError("number bounds admit no value")
        salt = self._next_salt()

        def gen(seed: int, depth: int) -> float:
            # A fraction strictly inside (0, 1) keeps exclusive bounds satisfied too.
            frac = ((seed + salt) % 9 + 1) / 10
            if low is not None and high is not None:
                return low + (high - low) * frac if high > low else float(low)
            if low is not None:
                return low + frac
            if high is not None:
                return high - frac
            return frac

        return gen

    def _string(self, node: dict[str, Any]) -> _Gen:
        fixed = _FORMATS.get(node.get("format", ""))
        if fixed is not None:
            return lambda seed, depth: fixed
        min_len = int(node.get("minLength", 0))
        max_len = node.get("maxLength")
        salt = self._next_salt()

        def gen(seed: int, depth: int) -> str:
            word = WORDS[(seed + salt) % len(WORDS)]
            if len(word) < min_len:
                word = word + "x" * (min_len - len(word))
            return word if max_len is None else word[: int(max_len)]

        return gen


def _is_null_schema(node: Any) -> bool:
    return isinstance(node, dict) and (node.get("type") == "null" or node.get("const", 0) is None)


def _first_type(node: dict[str, Any]) -> str:
    kind = node.get("type")
    if isinstance(kind, list):
        non_null = [k for k in kind if k != "null"]
        kind = non_null[0] if non_null else "null"
    if isinstance(kind, str):
        if kind not in _JSON_TYPES:
            raise SchemaError(f"unknown type {kind!r}")
        return kind
    # No `type`: infer it from the keywords present, as a grammar builder would.
    if {"properties", "required", "additionalProperties"} & node.keys():
        return "object"
    if {"items", "prefixItems", "minItems", "maxItems"} & node.keys():
        return "array"
    if {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"} & node.keys():
        return "number"
    return "string"


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _bounds(node: dict[str, Any]) -> tuple[float | None, float | None]:
    """The tightest numeric bounds, inclusive or exclusive alike (see `_Compiler._number`)."""
    lows = [v for k in ("minimum", "exclusiveMinimum") if (v := _num(node.get(k))) is not None]
    highs = [v for k in ("maximum", "exclusiveMaximum") if (v := _num(node.get(k))) is not None]
    return (max(lows) if lows else None, min(highs) if highs else None)


def _integer_bounds(node: dict[str, Any]) -> tuple[int | None, int | None]:
    lows: list[int] = []
    highs: list[int] = []
    # Draft 4 spells exclusivity as a boolean flag next to minimum/maximum.
    flag_min = node.get("exclusiveMinimum") is True
    flag_max = node.get("exclusiveMaximum") is True
    if (v := _num(node.get("minimum"))) is not None:
        lows.append(math.floor(v) + 1 if flag_min else math.ceil(v))
    if (v := _num(node.get("exclusiveMinimum"))) is not None:
        lows.append(math.floor(v) + 1)
    if (v := _num(node.get("maximum"))) is not None:
        highs.append(math.ceil(v) - 1 if flag_max else math.floor(v))
    if (v := _num(node.get("exclusiveMaximum"))) is not None:
        highs.append(math.ceil(v) - 1)
    return (max(lows) if lows else None, min(highs) if highs else None)


def _violation(compiler: _Compiler, root: dict[str, Any]) -> str:
    node: Any = root
    for _ in range(16):  # follow a chain of $ref to the schema that shapes the root value
        if isinstance(node, dict) and isinstance(node.get("$ref"), str):
            node = compiler.resolve(node["$ref"])
    if not isinstance(node, dict):
        return _dumps({"unexpected": True})
    allowed = _root_types(compiler, node)
    if "object" in allowed and node.get("required"):
        return _dumps({"unexpected": True})
    candidates: tuple[tuple[Any, set[str]], ...] = (
        ({"unexpected": True}, {"object"}),
        ("unexpected", {"string"}),
        (12345, {"integer", "number"}),
        ([], {"array"}),
        (True, {"boolean"}),
    )
    for value, kinds in candidates:
        if not kinds & allowed:
            return _dumps(value)
    return _dumps({"unexpected": True})  # the schema accepts anything: nothing can violate it


def _root_types(compiler: _Compiler, node: dict[str, Any]) -> set[str]:
    branches = node.get("anyOf") or node.get("oneOf")
    if isinstance(branches, list):
        out: set[str] = set()
        for branch in branches:
            if isinstance(branch, dict) and isinstance(branch.get("$ref"), str):
                branch = compiler.resolve(branch["$ref"])
            if isinstance(branch, dict):
                out |= _root_types(compiler, branch)
        return out
    values = [node["const"]] if "const" in node else node.get("enum")
    if isinstance(values, list):
        return {_json_type(v) for v in values}
    kind = node.get("type")
    if isinstance(kind, str):
        kind = [kind]
    if isinstance(kind, list):
        kinds = set(kind)
        if "integer" in kinds:
            kinds.add("number")
        return kinds
    if node == {} or "allOf" in node:
        return set(_JSON_TYPES)
    return {_first_type(node)}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"
