"""JSON-schema constraints for the embedded backend, enforced by llguidance.

llama.cpp's own GBNF sampler checks the grammar against the whole vocabulary (262k tokens for
Gemma 3) at every step, which costs more than the model; llguidance computes the same token
mask in about a millisecond. It plugs into llama-cpp-python as a logits processor that masks
every token the schema does not allow at that point.

The JSON it allows is the JSON llama.cpp's schema grammar allowed, so outputs keep their shape:
`", "` between items and `": "` after keys, an optional space inside braces and brackets, no
property the schema does not name unless `additionalProperties` says so, and integers of at most
16 digits (without that cap a small model can write zeros until its token limit).

The engine's tokenizer needs every token's bytes: reading 262k of them through ctypes takes
seconds, so they are cached on disk per model file (see `TokenCache`).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import threading
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

CACHE_MAGIC = b"batch-llguidance-tokens 1\n"
# llama.cpp's JSON grammar writes integers as `[1-9] [0-9]{0,15}`: at most 16 digits. llguidance
# reads bounds as doubles, where 10**16 - 1 rounds up to 10**16; 2**53 - 1 is exact and also has
# 16 digits.
INTEGER_LIMIT = 2**53 - 1
# What llama.cpp's schema grammar lets a model write between JSON tokens, as llguidance options.
JSON_SHAPE: Any = {
    "item_separator": ", ",
    "key_separator": ": ",
    "whitespace_flexible": False,
    "whitespace_pattern": " ",
}
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_SCHEMA_VALUES = ("items", "additionalItems", "additionalProperties", "contains", "not")


class Uncompilable(Exception):
    """A schema llguidance cannot enforce (unsupported keywords, look-around regexes, ...)."""


def as_llama_cpp_would(schema: Any) -> Any:
    """The schema with llama.cpp's implicit limits written out, for an engine that follows
    JSON Schema to the letter: closed objects and 16-digit integers."""
    if isinstance(schema, list):
        return [as_llama_cpp_would(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [as_llama_cpp_would(item) for item in out[key]]
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: as_llama_cpp_would(sub) for name, sub in out[key].items()}
    for key in _SCHEMA_VALUES:
        if isinstance(out.get(key), dict | list):
            out[key] = as_llama_cpp_would(out[key])
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    if out.get("type") == "integer":
        if "maximum" not in out and "exclusiveMaximum" not in out:
            out["maximum"] = INTEGER_LIMIT
        if "minimum" not in out and "exclusiveMinimum" not in out:
            out["minimum"] = -INTEGER_LIMIT
    return out


class TokenCache:
    """Every token's bytes for one model file, kept in `directory` so that the next run reads
    them in a fraction of a second. A cache written for another version of the file (size or
    modification time differ) is rebuilt."""

    def __init__(self, model: Path, directory: Path) -> None:
        self.model = model
        key = hashlib.sha256(str(model.resolve()).encode()).hexdigest()[:16]
        self.path = directory / f"{model.stem}-{key}.tokens"

    def fingerprint(self) -> dict[str, Any]:
        stat = self.model.stat()
        return {"model": self.model.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    def read(self) -> list[bytes] | None:
        """The cached tokens, or None when there is no cache for this very file."""
        try:
            data = self.path.read_bytes()
            return self._parse(data)
        except (OSError, ValueError, KeyError, TypeError):
            return None  # missing or damaged: rebuilt

    def _parse(self, data: bytes) -> list[bytes] | None:
        if not data.startswith(CACHE_MAGIC):
            return None
        header_end = data.index(b"\n", len(CACHE_MAGIC))
        header = json.loads(data[len(CACHE_MAGIC) : header_end])
        if header["fingerprint"] != self.fingerprint():
            return None
        count = int(header["tokens"])
        offsets_at = header_end + 1
        pieces_at = offsets_at + 4 * (count + 1)
        ends = np.frombuffer(data, dtype="<u4", count=count + 1, offset=offsets_at).tolist()
        if len(data) != pieces_at + ends[-1]:
            return None
        return [data[pieces_at + a : pieces_at + b] for a, b in pairwise(ends)]

    def write(self, tokens: list[bytes]) -> None:
        header = json.dumps({"fingerprint": self.fingerprint(), "tokens": len(tokens)})
        ends = np.cumsum([0, *map(len, tokens)], dtype=np.uint64).astype("<u4")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(f".{os.getpid()}.partial")
        with partial.open("wb") as out:
            out.write(CACHE_MAGIC + header.encode() + b"\n")
            out.write(ends.tobytes())
            out.write(b"".join(tokens))
        partial.replace(self.path)  # a reader never sees half a file


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "batch" / "tokenizers"


def vocabulary_tokens(llama_cpp: Any, vocab: Any) -> list[bytes]:
    """Each token's bytes as llguidance wants them: control tokens marked with a 0xFF byte."""
    size = 16 * 1024
    buffer = ctypes.create_string_buffer(size + 1)
    special = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL
    tokens: list[bytes] = []
    for token in range(llama_cpp.llama_vocab_n_tokens(vocab)):
        length = llama_cpp.llama_token_to_piece(vocab, token, buffer, size, 0, True)
        if length < 0:
            raise ValueError(f"token {token} is longer than {size} bytes")
        piece = buffer.raw[:length]
        attr = llama_cpp.llama_vocab_get_attr(vocab, token)
        user_control = piece.startswith(b"<") and piece.endswith(b">")
        if attr & special or (attr & llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED and user_control):
            piece = b"\xff" + piece
        tokens.append(piece)
    return tokens


def build_tokenizer(llama_cpp: Any, llm: Any, cache: TokenCache) -> Any:
    """llguidance's tokenizer for a loaded model, its token bytes read from `cache` or, when
    the cache is missing or stale, from the model and then written there."""
    from llguidance import LLTokenizer

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    tokens = cache.read()
    if tokens is None or len(tokens) != llama_cpp.llama_vocab_n_tokens(vocab):
        tokens = vocabulary_tokens(llama_cpp, vocab)
        # A cache that cannot be written costs time on the next run, nothing else.
        with contextlib.suppress(OSError):
            cache.write(tokens)
    # Either end of turn ends the answer: `<eos>`, or Gemma's `<end_of_turn>`.
    ends = [llama_cpp.llama_vocab_eos(vocab), llama_cpp.llama_vocab_eot(vocab)]
    tokenize = ctypes.cast(llama_cpp.llama_cpp._lib.llama_tokenize, ctypes.c_void_p).value
    untyped: Any = LLTokenizer  # `from_llamacpp` is missing from llguidance's stubs
    return untyped.from_llamacpp(
        tokens=tokens,
        vocab_ptr=vocab,
        tokenize_fptr=tokenize,
        eos_token=sorted({end for end in ends if end >= 0}),
        slices=LLTokenizer.json_slices(),
    )


class SchemaGrammars:
    """Compiled schemas for one tokenizer, each compiled once per run."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._compiled: dict[str, str | Uncompilable] = {}
        self._lock = threading.Lock()

    def compile(self, schema: dict[str, Any]) -> str:
        from llguidance import LLMatcher

        key = json.dumps(schema, sort_keys=True)
        with self._lock:
            found = self._compiled.get(key)
            if found is None:
                try:
                    grammar = LLMatcher.grammar_from_json_schema(
                        as_llama_cpp_would(schema), overrides=JSON_SHAPE
                    )
                    failed, messages = LLMatcher.validate_grammar_with_warnings(
                        grammar, self.tokenizer
                    )
                    found = Uncompilable("; ".join(messages)) if failed else grammar
                except ValueError as exc:
                    found = Uncompilable(str(exc))
                self._compiled[key] = found
        if isinstance(found, Uncompilable):
            raise found
        return found

    def processor(self, schema: dict[str, Any], *, greedy: bool = False) -> SchemaMask:
        return SchemaMask(self.tokenizer, self.compile(schema), greedy=greedy)


class SchemaMask:
    """A llama-cpp-python logits processor for one generation: it feeds the tokens generated
    since its last call to the matcher, then sets every token the schema forbids to -inf.

    `greedy`: the sampler takes the top token and nothing after this processor changes the
    scores, so when the top token is allowed the mask would change nothing: one token checked
    instead of a 262k-token mask, on most steps of a model that mostly writes valid JSON.
    """

    def __init__(self, tokenizer: Any, grammar: str, *, greedy: bool = False) -> None:
        from llguidance import LLMatcher

        self._matcher = LLMatcher(tokenizer, grammar, log_level=0)
        self._bits = np.zeros((tokenizer.vocab_size + 31) // 32, dtype=np.int32)
        self._seen: int | None = None  # the prompt's length, at the first call
        self._greedy = greedy

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self._seen is None:
            self._seen = len(input_ids)
        for token in input_ids[self._seen :]:
            self._matcher.consume_token(int(token))
        self._seen = len(input_ids)
        if self._greedy and self._matcher.validate_tokens([int(np.argmax(scores))]) == 1:
            return scores
        self._matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        allowed = np.unpackbits(self._bits.view(np.uint8), bitorder="little", count=len(scores))
        scores[allowed == 0] = -np.inf
        return scores
