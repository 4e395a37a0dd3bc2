"""An OpenAI Batch request line -> a row: the chat completion body mapped onto an Ollama chat.

    {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "gpt-4o-mini", "messages": [...], "response_format": {...}, ...}}

What Ollama cannot do (several choices, tools, logit bias, audio, another endpoint...) makes the
row a `bad_input` failure that names the field: a request never runs with part of it dropped.
Fields that only steer OpenAI's own bookkeeping (`user`, `metadata`, `store`...) are ignored.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

import jsonschema

from batch.core.chat import ChatRequest, Format
from batch.core.errors import BadInput, ConfigError
from batch.core.images import ImagePolicy, ImageRef
from batch.core.rows import RowDefaults
from batch.core.schema import AnyJsonObject, OutputSchema, compile_json_schema
from batch.source.native_in import NO_MODEL

URL = "/v1/chat/completions"
# OpenAI body field -> Ollama option of the same meaning.
OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}
# Fields for OpenAI's bookkeeping or routing: they do not change the reply.
IGNORED = frozenset(
    {"user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key"}
)
HANDLED = frozenset(
    {"model", "messages", "response_format", "stop", "max_tokens", "max_completion_tokens"}
    | set(OPTIONS)
    | {"n", "stream", "logprobs", "tools", "tool_choice", "functions", "parallel_tool_calls"}
)
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
TOOLLESS = (None, "none", "auto")  # tool_choice values that mean nothing without tools
MESSAGE_FIELDS = frozenset({"role", "content", "name", "refusal"})
SCHEMA_CACHE = 64  # compiled response_format schemas kept: a file usually repeats one


def is_openai_request(data: dict[str, Any]) -> bool:
    """An OpenAI Batch request line: `{"custom_id", "method", "url", "body"}`. Native rows may
    carry `body` and `url` as template data (a scraped page and its address), so it takes
    `body` with `method`, or with an API path as `url`."""
    url = data.get("url")
    return "body" in data and (
        "method" in data or (isinstance(url, str) and url.startswith("/v1/"))
    )


def openai_request(
    defaults: RowDefaults, data: dict[str, Any]
) -> tuple[ChatRequest, OutputSchema | None]:
    """The request, and the schema its reply is checked against: the row's own
    `response_format` when it has one, else the run's."""
    _check_envelope(data)
    body = data["body"]
    model = _model(defaults, body)
    messages = _messages(body, defaults.images)
    if defaults.system is not None and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": defaults.system}, *messages]
    options = {**defaults.options, **_options(body)}
    request_format, schema = defaults.format, defaults.schema
    if "response_format" in body:
        request_format, schema = _response_format(body["response_format"])
    return ChatRequest(model, messages, format=request_format, options=options), schema


def _check_envelope(data: dict[str, Any]) -> None:
    method, url = data.get("method", "POST"), data.get("url")
    if url != URL:
        raise BadInput(
            f"url {url!r} is not supported: batch runs OpenAI Batch requests for {URL} only"
        )
    if method != "POST":
        raise BadInput(f"method {method!r}: OpenAI Batch requests use POST")
    if not isinstance(data["body"], dict):
        raise BadInput("body must be a JSON object (the chat completion request)")


def _model(defaults: RowDefaults, body: dict[str, Any]) -> str:
    # The run's model wins here, unlike native rows: a file written for OpenAI names OpenAI's
    # models, and moving it to a local one should take one flag, not an edited file.
    model = defaults.model or body.get("model")
    if not isinstance(model, str) or not model:
        if "model" in body:
            raise BadInput("body.model must be a non-empty string")
        raise ConfigError(NO_MODEL)
    return model


def _options(body: dict[str, Any]) -> dict[str, Any]:
    for key in body:
        if key not in HANDLED and key not in IGNORED:
            raise BadInput(f"body.{key} is not supported on Ollama: remove it from the request")
    if body.get("n", 1) != 1:
        raise BadInput("body.n must be 1: Ollama returns one choice per request")
    if body.get("stream", False) is not False:
        raise BadInput("body.stream must be false in a batch request")
    if body.get("logprobs", False) is not False:
        raise BadInput("body.logprobs is not supported on Ollama")
    if body.get("tools") or body.get("functions") or body.get("tool_choice") not in TOOLLESS:
        raise BadInput("tools are not supported by batch yet: remove them")
    options: dict[str, Any] = {}
    for key, option in OPTIONS.items():
        if key in body and body[key] is not None:
            value = body[key]
            kind = int if key == "seed" else int | float
            if isinstance(value, bool) or not isinstance(value, kind):
                raise BadInput(f"body.{key} must be a number")
            options[option] = value
    if (stop := body.get("stop")) is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise BadInput("body.stop must be a string or an array of strings")
        options["stop"] = stops
    if (limit := _max_tokens(body)) is not None:
        options["num_predict"] = limit
    return options


def _max_tokens(body: dict[str, Any]) -> int | None:
    given = {k: body[k] for k in ("max_completion_tokens", "max_tokens") if body.get(k) is not None}
    for key, value in given.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadInput(f"body.{key} must be a positive integer")
    if len(set(given.values())) > 1:
        raise BadInput("body.max_tokens and body.max_completion_tokens differ: give one")
    return next(iter(given.values()), None)


def _messages(body: dict[str, Any], images: ImagePolicy) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadInput("body.messages must be a non-empty array")
    return [_message(i, m, images) for i, m in enumerate(messages)]


def _message(index: int, message: Any, images: ImagePolicy) -> dict[str, Any]:
    where = f"body.messages[{index}]"
    if not isinstance(message, dict):
        raise BadInput(f"{where} must be an object")
    role = message.get("role")
    if role in ("tool", "function") or message.get("tool_calls") or message.get("function_call"):
        raise BadInput(f"{where}: tool calls are not supported by batch yet")
    if role not in ROLES:
        raise BadInput(f"{where} has role {role!r}; use system, user or assistant")
    for key in message:
        if key not in MESSAGE_FIELDS and message[key] is not None:
            raise BadInput(f"{where}.{key} is not supported on Ollama")
    if message.get("refusal") is not None:
        raise BadInput(f"{where}.refusal is not supported on Ollama")
    content = message.get("content")
    if isinstance(content, str):
        return {"role": ROLES[role], "content": content}
    if not isinstance(content, list) or not content:
        raise BadInput(f"{where}.content must be a string or an array of parts")
    texts: list[str] = []
    refs: list[ImageRef] = []
    for i, part in enumerate(content):
        part_where = f"{where}.content[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                raise BadInput(f"{part_where}.image_url needs a url")
            refs.append(ImageRef(url, f"{part_where}.image_url", images))
        else:
            raise BadInput(
                f"{part_where} is not a text or image_url part"
                + (f" ({kind!r} is not supported on Ollama)" if isinstance(kind, str) else "")
            )
    # Several text parts read as one prompt, a part a paragraph, as vLLM joins them.
    out: dict[str, Any] = {"role": ROLES[role], "content": "\n".join(texts)}
    if refs:
        out["images"] = refs
    return out


_compiled: OrderedDict[str, OutputSchema] = OrderedDict()


def _response_format(value: Any) -> tuple[Format | None, OutputSchema | None]:
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None, None
    if kind == "json_object":
        return "json", AnyJsonObject()
    if kind != "json_schema":
        raise BadInput("body.response_format must have type text, json_object or json_schema")
    spec = value.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise BadInput("body.response_format.json_schema.schema must be an object")
    return schema, _validator(schema)


def _validator(schema: dict[str, Any]) -> OutputSchema:
    key = json.dumps(schema, sort_keys=True)
    if (known := _compiled.get(key)) is not None:
        _compiled.move_to_end(key)
        return known
    try:
        compiled = compile_json_schema(schema)
    except jsonschema.SchemaError as exc:
        raise BadInput(
            f"body.response_format.json_schema.schema is not a valid JSON Schema: {exc.message}"
        ) from None
    _compiled[key] = compiled
    if len(_compiled) > SCHEMA_CACHE:
        _compiled.popitem(last=False)
    return compiled
