"""What the fake Ollama server puts on the wire: request checks and canned bodies, as Ollama's Go
server (gin + encoding/json) spells them."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

JSON_TYPE = "application/json; charset=utf-8"
NDJSON_TYPE = "application/x-ndjson"
ARCH = "fakearch"
VISION_ARCH = "qwen3vl"  # a vision family Ollama runs with one slot

LOAD_NS = 1_000  # the model is always loaded already
_DECODER = json.JSONDecoder()
GO_WHITESPACE = " \t\r\n"


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def json_response(status: int, payload: Any) -> web.Response:
    return web.Response(status=status, body=dumps(payload), headers={"Content-Type": JSON_TYPE})


def error_response(status: int, message: str) -> web.Response:
    return json_response(status, {"error": message})


def not_found() -> web.Response:
    return web.Response(status=404, text="404 page not found", content_type="text/plain")


def method_not_allowed() -> web.Response:
    # Ollama's router sets gin's HandleMethodNotAllowed (server/routes.go, GenerateRoutes).
    return web.Response(status=405, text="405 method not allowed", content_type="text/plain")


# Fault kinds answered at once with a fixed status and body: (status, content type, body).
CANNED: dict[str, tuple[int, str, bytes]] = {
    "busy": (
        503,
        JSON_TYPE,
        dumps({"error": "server busy, please try again.  maximum pending requests exceeded"}),
    ),
    "crash": (
        500,
        JSON_TYPE,
        dumps(
            {
                "error": "model runner has unexpectedly stopped, this may be due to resource "
                "limitations or an internal error, check ollama server logs for details"
            }
        ),
    ),
    "rate_limit": (429, JSON_TYPE, dumps({"error": "too many requests"})),
    # What a reverse proxy in front of Ollama answers: not JSON at all.
    "bad_gateway": (
        502,
        "text/html",
        b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
        b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
        b"</body>\r\n</html>\r\n",
    ),
    "gateway_timeout": (504, "text/plain; charset=utf-8", b"upstream request timeout"),
    # An authenticating reverse proxy in front of Ollama (nginx's own pages).
    "unauthorized": (
        401,
        "text/html",
        b"<html>\r\n<head><title>401 Authorization Required</title></head>\r\n<body>\r\n"
        b"<center><h1>401 Authorization Required</h1></center>\r\n<hr><center>nginx</center>"
        b"\r\n</body>\r\n</html>\r\n",
    ),
    "forbidden": (
        403,
        "text/html",
        b"<html>\r\n<head><title>403 Forbidden</title></head>\r\n<body>\r\n"
        b"<center><h1>403 Forbidden</h1></center>\r\n<hr><center>nginx</center>\r\n"
        b"</body>\r\n</html>\r\n",
    ),
}

INVALID_FORMAT = 'invalid format: expected "json" or a valid JSON schema'
STREAM_ERROR = "an error was encountered while running the model: unexpected EOF"


def canned_response(kind: str) -> web.Response:
    status, content_type, body = CANNED[kind]
    return web.Response(status=status, body=body, headers={"Content-Type": content_type})


def go_type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _go_char(ch: str) -> str:
    if ch == "'":
        return "'\\''"
    return "'" + json.dumps(ch)[1:-1].replace('\\"', '"') + "'"


_GO_CONTEXT = {
    "Expecting value": "looking for beginning of value",
    "Expecting property name enclosed in double quotes": (
        "looking for beginning of object key string"
    ),
    "Expecting ':' delimiter": "after object key",
    "Expecting ',' delimiter": "after object key:value pair",
    "Invalid control character at": "in string literal",
}


def parse_body(raw: bytes, struct: str) -> dict[str, Any] | str:
    """The JSON object in a request body, or the error text Ollama answers with a 400.

    Like Go's `json.Decoder.Decode`, only the first value counts and trailing bytes are ignored.
    """
    text = raw.decode("utf-8", "replace").lstrip(GO_WHITESPACE)
    if not text:
        return "missing request body"
    try:
        value, _ = _DECODER.raw_decode(text)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(exc.doc) or exc.msg.startswith("Unterminated"):
            return "unexpected EOF"
        where = _GO_CONTEXT.get(exc.msg, "looking for beginning of value")
        return f"invalid character {_go_char(exc.doc[exc.pos])} {where}"
    if value is None:
        return {}  # Go decodes `null` into a zero struct
    if not isinstance(value, dict):
        return f"json: cannot unmarshal {go_type_name(value)} into Go value of type api.{struct}"
    return value


def _field_error(struct: str, field: str, value: Any, go_type: str) -> str:
    return (
        f"json: cannot unmarshal {go_type_name(value)} into Go struct field "
        f"{struct}.{field} of type {go_type}"
    )


# Fields whose JSON type the fake checks, with the Go type named in the error.
_FIELDS = {
    "ChatRequest": (("model", str, "string"), ("messages", list, "[]api.Message")),
    "GenerateRequest": (("model", str, "string"), ("prompt", str, "string")),
}
_COMMON = (
    ("system", str, "string"),
    ("stream", bool, "bool"),
    ("options", dict, "map[string]interface {}"),
)


def check_fields(body: dict[str, Any], struct: str) -> str | None:
    """The Go unmarshal error for a field of the wrong JSON type (null is fine, as in Go)."""
    for field, py_type, go_type in _FIELDS[struct] + _COMMON:
        value = body.get(field)
        if value is not None and not isinstance(value, py_type):
            return _field_error(struct, field, value, go_type)
    if struct == "ChatRequest":
        for message in body.get("messages") or ():
            if not isinstance(message, dict):
                return _field_error(struct, "messages", message, "api.Message")
            for field in ("role", "content"):
                value = message.get(field)
                if value is not None and not isinstance(value, str):
                    return _field_error(struct, f"messages.{field}", value, "string")
            if (problem := _check_images(struct, message.get("images"))) is not None:
                return problem
    return None


def _check_images(struct: str, images: Any) -> str | None:
    """Go decodes `images` ([]ImageData, i.e. [][]byte) from standard base64 strings."""
    if images is None:
        return None
    if not isinstance(images, list):
        return _field_error(struct, "messages.images", images, "[]api.ImageData")
    for image in images:
        if not isinstance(image, str):
            return _field_error(struct, "messages.images", image, "api.ImageData")
        try:
            base64.b64decode(image, validate=True)
        except binascii.Error:
            # Go names the offset of the first byte it could not use.
            bad = next((i for i, ch in enumerate(image) if ch not in _BASE64), len(image))
            return f"illegal base64 data at input byte {bad}"
    return None


_BASE64 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


def full_name(model: str) -> str:
    """`name` and `name:latest` are one model; a tag is after the last path component's colon."""
    return model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"


class Catalog:
    """The models the fake serves, with the bodies of the routes that describe them."""

    def __init__(
        self,
        models: Sequence[str],
        context_length: int,
        thinking: Sequence[str] = (),
        vision: Sequence[str] = (),
        *,
        model_info: bool = True,
    ) -> None:
        self.names = tuple(dict.fromkeys(full_name(m) for m in (*models, *thinking, *vision)))
        self.thinking = frozenset(full_name(m) for m in thinking)
        self.vision = frozenset(full_name(m) for m in vision)
        self.context_length = context_length
        self.model_info = model_info  # some older servers leave it out of /api/show
        # Loaded models (they served a request), with the context each runs with, for /api/ps.
        self.loaded: dict[str, int] = {}

    def family(self, name: str) -> str:
        return VISION_ARCH if full_name(name) in self.vision else ARCH

    def details(self, name: str) -> dict[str, Any]:
        family = self.family(name)
        return {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family],
            "parameter_size": "1.0B",
            "quantization_level": "Q4_K_M",
        }

    def _entry(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "model": name,
            "modified_at": "2025-01-01T00:00:00Z",
            "size": 1_000_000_000,
            "digest": hashlib.sha256(name.encode()).hexdigest(),
            "details": self.details(name),
        }

    def tags(self) -> dict[str, Any]:
        return {"models": [self._entry(name) for name in self.names]}

    def ps(self, expires: Mapping[str, str] | None = None) -> dict[str, Any]:
        """`expires`: model -> expires_at (ISO time); absent: far in the future."""
        models = []
        for name in self.names:
            if name in self.loaded:
                entry = self._entry(name)
                del entry["modified_at"]
                entry["expires_at"] = (expires or {}).get(name, "2099-01-01T00:00:00Z")
                entry["size_vram"] = entry["size"]
                entry["context_length"] = self.loaded[name]  # per slot, as Ollama reports it
                models.append(entry)
        return {"models": models}

    def show(self, name: str) -> dict[str, Any]:
        name = full_name(name)
        arch = self.family(name)
        capabilities = ["completion"]
        if name in self.thinking:
            capabilities.append("thinking")
        if name in self.vision:
            capabilities.append("vision")
        shown: dict[str, Any] = {
            "license": "",
            "modelfile": f"# Modelfile of the fake model {name}\nFROM {name}\n",
            "parameters": "",
            "template": "{{ .Prompt }}",
            "details": self.details(name),
            "model_info": {
                "general.architecture": arch,
                "general.parameter_count": 1_000_000_000,
                f"{arch}.context_length": self.context_length,
                f"{arch}.embedding_length": 2048,
            },
            "capabilities": capabilities,
            "modified_at": "2025-01-01T00:00:00Z",
        }
        if not self.model_info:
            del shown["model_info"]
        return shown


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def envelope(model: str, chat: bool, content: str, *, done: bool = True) -> dict[str, Any]:
    """A chat (`message`) or generate (`response`) reply object, before the metrics."""
    out: dict[str, Any] = {"model": model, "created_at": now()}
    if chat:
        out["message"] = {"role": "assistant", "content": content}
    else:
        out["response"] = content
    out["done"] = done
    return out


def metrics(
    total_ns: int, generation_ns: int, prompt_tokens: int, eval_tokens: int, *, counts: bool
) -> dict[str, int]:
    """Ollama's timing and token fields; Go's `omitempty` drops zero counts."""
    prompt_ns = max(1, generation_ns // 5)
    eval_ns = max(1, generation_ns - prompt_ns)
    out = {"total_duration": max(total_ns, LOAD_NS + prompt_ns + eval_ns), "load_duration": LOAD_NS}
    if counts:
        if prompt_tokens:
            out["prompt_eval_count"] = prompt_tokens
        out["prompt_eval_duration"] = prompt_ns
        if eval_tokens:
            out["eval_count"] = eval_tokens
        out["eval_duration"] = eval_ns
    return out


def fragments(content: str, parts: int = 4) -> list[str]:
    """`content` in up to `parts` non-empty pieces, for the `done:false` stream chunks."""
    if not content:
        return []
    step = -(-len(content) // min(parts, len(content)))
    return [content[i : i + step] for i in range(0, len(content), step)]


_WORD = re.compile(r"\S+")


def cut_words(text: str, words: int) -> str:
    """`text` up to the end of its `words`-th word, original spacing kept."""
    for i, match in enumerate(_WORD.finditer(text), 1):
        if i == words:
            return text[: match.end()]
    return text


def partial(payload: dict[str, Any]) -> bytes:
    """The first half of a JSON object's text: never valid JSON."""
    data = dumps(payload)
    return data[: len(data) // 2]


def thinking(prompt: str) -> str:
    """What a thinking model reasons before it answers (in `message.thinking`)."""
    return "The user asks about: " + " ".join(prompt.split()[:8]) + ". Let me answer."
