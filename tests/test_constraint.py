"""The embedded backend's schema engine (llguidance) on a byte-level tokenizer: no model needed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from batch.serving.constraint import (
    INTEGER_LIMIT,
    SchemaGrammars,
    TokenCache,
    Uncompilable,
    as_llama_cpp_would,
)

llguidance = pytest.importorskip("llguidance")

EOS = 256
ORDER = {
    "type": "object",
    "properties": {
        "item": {"type": "string", "minLength": 1, "maxLength": 40},
        "quantity": {"type": "integer", "minimum": 1},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["item", "quantity"],
}


class Bytes:
    """A tokenizer whose tokens are the 256 bytes, and an end token."""

    eos_token_id = EOS
    bos_token_id = None
    tokens = [bytes([b]) for b in range(256)] + [b"\xff<eos>"]
    special_token_ids = [EOS]

    def __call__(self, text: str | bytes) -> list[int]:
        return list(text.encode() if isinstance(text, str) else text)


@pytest.fixture(scope="module")
def grammars() -> SchemaGrammars:
    from llguidance._tokenizer import TokenizerWrapper

    return SchemaGrammars(llguidance.LLTokenizer(TokenizerWrapper(Bytes())))


def accepts(grammars: SchemaGrammars, schema: dict[str, Any], text: str) -> bool:
    matcher = llguidance.LLMatcher(grammars.tokenizer, grammars.compile(schema), log_level=0)
    return bool(matcher.consume_tokens(list(text.encode())) and matcher.is_accepting())


def test_schemas_get_the_limits_llama_cpp_put_on_them() -> None:
    closed = as_llama_cpp_would(
        {
            "type": "object",
            "properties": {"n": {"type": "integer"}, "list": {"items": {"$ref": "#/$defs/x"}}},
            "$defs": {"x": {"type": "object", "properties": {"y": {"type": "integer"}}}},
            "anyOf": [{"type": "object", "properties": {}, "additionalProperties": True}],
        }
    )
    assert closed["additionalProperties"] is False
    assert closed["properties"]["n"] == {
        "type": "integer",
        "maximum": INTEGER_LIMIT,
        "minimum": -INTEGER_LIMIT,
    }
    assert closed["$defs"]["x"]["additionalProperties"] is False
    assert closed["$defs"]["x"]["properties"]["y"]["maximum"] == INTEGER_LIMIT
    assert closed["anyOf"][0]["additionalProperties"] is True  # said by the schema: kept
    # An object with no properties named is any object, as in llama.cpp's grammar.
    assert as_llama_cpp_would({"type": "object"}) == {"type": "object"}
    bounded = {"type": "integer", "minimum": 1, "exclusiveMaximum": 10}
    assert as_llama_cpp_would(bounded) == bounded
    assert len(str(INTEGER_LIMIT)) == 16


@pytest.mark.parametrize(
    ("text", "allowed"),
    [
        # The shapes llama.cpp's grammar lets the model write, and the model writes.
        ('{ "item": "mug", "quantity": 3 }', True),
        ('{"item": "mug", "quantity": 3, "tags": ["a", "b"]}', True),
        ('{ "item": "mug", "quantity": 3, "tags": [ "a" ] }', True),
        ('{ "item": "mug", "quantity": 9007199254740991 }', True),
        # Compact JSON sends this model into runs of zeros: spaces after ':' and ',' are kept.
        ('{"item":"mug","quantity":3}', False),
        ('{"item": "mug","quantity": 3}', False),
        # Nothing the schema does not name, and the schema's own limits.
        ('{ "item": "mug", "quantity": 3, "city": "Lyon" }', False),
        ('{ "item": "mug", "quantity": 10000000000000000 }', False),
        ('{ "item": "mug", "quantity": 0 }', False),
        ('{ "item": "", "quantity": 3 }', False),
        ('{ "quantity": 3, "item": "mug" }', False),
    ],
)
def test_the_engine_allows_the_json_llama_cpp_s_grammar_allowed(
    grammars: SchemaGrammars, text: str, allowed: bool
) -> None:
    assert accepts(grammars, ORDER, text) is allowed


def test_a_schema_the_engine_cannot_compile_says_why(grammars: SchemaGrammars) -> None:
    schema = {**ORDER, "dependentRequired": {"item": ["quantity"]}}
    with pytest.raises(Uncompilable, match="dependentRequired"):
        grammars.compile(schema)
    with pytest.raises(Uncompilable, match="look-around"):
        grammars.compile({"type": "string", "pattern": "^(?=a)b$"})


def test_the_mask_leaves_only_what_the_schema_allows_next(grammars: SchemaGrammars) -> None:
    prompt = [7, 7, 7]
    mask = grammars.processor(ORDER)
    scores = mask(np.array(prompt), np.zeros(EOS + 1, dtype=np.float32))
    assert np.flatnonzero(scores == 0).tolist() == [ord("{")]

    # After the prompt, the generated tokens reach the matcher through input_ids.
    written = list(b'{ "item": "mug", "quantity": 3')
    scores = mask(np.array(prompt + written), np.zeros(EOS + 1, dtype=np.float32))
    assert {chr(t) for t in np.flatnonzero(scores == 0)} >= {",", "}", " ", "0", "9"}
    assert scores[ord('"')] == -np.inf

    written += list(b" }")
    scores = mask(np.array(prompt + written), np.zeros(EOS + 1, dtype=np.float32))
    assert np.flatnonzero(scores == 0).tolist() == [EOS]


def test_a_greedy_mask_checks_the_top_token_only_when_it_is_allowed(
    grammars: SchemaGrammars,
) -> None:
    mask = grammars.processor(ORDER, greedy=True)
    scores = np.zeros(EOS + 1, dtype=np.float32)
    scores[ord("{")] = 5.0
    kept = mask(np.array([7]), scores.copy())
    assert np.array_equal(kept, scores)  # the top token is allowed: untouched

    mask = grammars.processor(ORDER, greedy=True)
    scores[ord("[")] = 9.0
    masked = mask(np.array([7]), scores.copy())
    assert int(np.argmax(masked)) == ord("{")
    assert masked[ord("[")] == -np.inf


def test_the_token_cache_is_rebuilt_for_a_different_model_file(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF one")
    cache = TokenCache(model, tmp_path / "cache")
    assert cache.read() is None
    tokens = [b"", b"\xff<eos>", b"a", "é".encode(), b"{ "]
    cache.write(tokens)
    assert cache.read() == tokens
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cache.path.name]

    model.write_bytes(b"GGUF two, longer")  # another file at the same path
    assert cache.read() is None
    stat = model.stat()
    cache.write(tokens[:2])
    assert cache.read() == tokens[:2]
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert cache.read() is None

    cache.path.write_bytes(b"not a cache")
    assert cache.read() is None
    header = json.dumps({"fingerprint": cache.fingerprint(), "tokens": 2}).encode()
    cache.path.write_bytes(b"batch-llguidance-tokens 1\n" + header + b"\n")  # cut short
    assert cache.read() is None


def test_format_json_allows_any_object(grammars: SchemaGrammars) -> None:
    from batch.serving.embedded import ANY_OBJECT

    assert accepts(grammars, ANY_OBJECT, '{ "a": [1, { "b": null }], "c": "d" }')
    assert accepts(grammars, ANY_OBJECT, "{}")
    assert not accepts(grammars, ANY_OBJECT, "[1]")
