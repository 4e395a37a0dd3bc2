"""Ollama's OpenAI-compatible routes on the fake server: `POST /v1/chat/completions` and
`GET /v1/models`.

Real Ollama serves these through a middleware that turns the OpenAI request into an `/api/chat`
request and the answer back into OpenAI's shapes; this module does the same around the fake's
own generation, so faults, latency, slots and token counts are those of `/api/chat`:

- the request is translated as Ollama does: `max_tokens` -> `num_predict`; `response_format`
  `json_object` -> `format: "json"`, `json_schema` -> its `schema` as `format`; each text part of a
  content list becomes its own message; `stream` is false when omitted (unlike `/api/chat`).
- `usage.prompt_tokens`/`completion_tokens` are `/api/chat`'s `prompt_eval_count`/`eval_count`
  (0 under the `no_counts` fault, as Ollama leaves them out); `finish_reason` is `done_reason`.
- errors from Ollama become `{"error": {"message", "type", "param", "code"}}` with the same status
  (`type`: 400 `invalid_request_error`, 404 `not_found_error`, else `api_error`); what a proxy in
  front answers (`bad_gateway`, `gateway_timeout`) passes through untouched.
- streaming is server-sent events: `data: <chat.completion.chunk>` lines, a last chunk with the
  `finish_reason`, a usage chunk with `stream_options.include_usage`, then `data: [DONE]`. Where
  the fake is free to choose (Ollama has no rule): `stream_error` sends two content chunks and
  then `data: {"error": {...}}` with no `[DONE]`; `stream_cut` sends the content and stops with
  no last chunk and no `[DONE]`.
- the fake's own "model" rule for `tools` (what pydantic-ai's tool output sends): it calls the
  function named by `tool_choice`, else the first one, with arguments that conform to its
  `parameters` schema (faults still apply: `prose` answers text instead of a call).

`FakeOllama.requests` records the OpenAI request bodies as sent.
"""

from __future__ import annotations

import json
import time
import zlib
from typing import Any

from aiohttp import web

from batch.testing import _wire
from batch.testing.fake_ollama import FakeOllama, Handler, Reply

__all__ = ["mount", "routes"]

OPENAI_JSON_TYPE = "application/json"  # what Ollama's middleware sets: no charset
SSE_TYPE = "text/event-stream"
FINGERPRINT = "fp_ollama"
_IMAGE_PREFIXES = (
    "data:;base64,",
    *(f"data:image/{t};base64," for t in ("jpeg", "jpg", "png", "webp")),
)
# Request fields whose JSON type is checked, with the Go type Ollama's error names.
_FIELDS: tuple[tuple[str, type | tuple[type, ...], str], ...] = (
    ("model", str, "string"),
    ("messages", list, "[]openai.Message"),
    ("stream", bool, "bool"),
    ("stream_options", dict, "openai.StreamOptions"),
    ("max_tokens", int, "int"),
    ("temperature", (int, float), "float64"),
    ("response_format", dict, "openai.ResponseFormat"),
    ("tools", list, "[]api.Tool"),
)


def mount(fake: FakeOllama) -> FakeOllama:
    """Adds the `/v1` routes to `fake` (before it starts); returns it."""
    fake.add_routes(routes(fake))
    return fake


def routes(fake: FakeOllama) -> dict[tuple[str, str], Handler]:
    """The routes to add to the fake's table."""
    compat = _OpenAICompat(fake)
    return {
        ("POST", "/v1/chat/completions"): compat.chat_completions,
        ("GET", "/v1/models"): compat.models,
    }


def error_body(status: int, message: str) -> bytes:
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    error = {"message": message, "type": kind, "param": None, "code": None}
    return _wire.dumps({"error": error})


def error_response(status: int, message: str) -> web.Response:
    return _json(status, error_body(status, message))


def _json(status: int, data: bytes) -> web.Response:
    # Go's json.Encoder ends the body with a newline.
    return web.Response(
        status=status, body=data + b"\n", headers={"Content-Type": OPENAI_JSON_TYPE}
    )


def _converted(response: web.StreamResponse) -> web.StreamResponse:
    """An `/api/chat` error response in OpenAI's shape; a non-JSON body (a proxy's) as it is."""
    if not isinstance(response, web.Response):
        return response  # a dropped connection
    if not response.content_type.startswith("application/json"):
        return response
    assert isinstance(response.body, bytes)
    return error_response(response.status, json.loads(response.body)["error"])


def _go_value_type(value: Any) -> str:
    """The Go type of a decoded JSON value, as Go's `%T` prints it."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "float64"
    return "map[string]interface {}" if isinstance(value, dict) else "[]interface {}"


def _check_fields(body: dict[str, Any]) -> str | None:
    for field, py_type, go_type in _FIELDS:
        value = body.get(field)
        wrong = value is not None and (
            not isinstance(value, py_type) or (isinstance(value, bool) and py_type is not bool)
        )
        if wrong:
            return (
                f"json: cannot unmarshal {_wire.go_type_name(value)} into Go struct field "
                f"ChatCompletionRequest.{field} of type {go_type}"
            )
    return None


def _messages(messages: list[Any]) -> list[dict[str, Any]] | str:
    """The `/api/chat` messages for OpenAI's, or the error Ollama answers with a 400."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, dict):
            return (
                f"json: cannot unmarshal {_wire.go_type_name(message)} into Go struct field "
                "ChatCompletionRequest.messages of type openai.Message"
            )
        role = message.get("role") or ""
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
        elif isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    out.append({"role": role, "content": part["text"]})
                elif kind == "image_url":
                    url = part.get("image_url")
                    url = url.get("url") if isinstance(url, dict) else url
                    if not isinstance(url, str):
                        return "invalid message format"
                    prefix = next((p for p in _IMAGE_PREFIXES if url.startswith(p)), None)
                    if prefix is None:
                        return "invalid image input"
                    out.append({"role": role, "content": "", "images": [url[len(prefix) :]]})
                else:
                    return "invalid message format"
        elif message.get("tool_calls"):
            out.append({"role": role, "content": ""})
        else:
            return f"invalid message content type: {_go_value_type(content)}"
    return out


def _format(response_format: dict[str, Any] | None) -> Any:
    """Ollama's `format` for OpenAI's `response_format` (other types: none, as in Ollama)."""
    kind = str((response_format or {}).get("type") or "").strip().lower()
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = (response_format or {}).get("json_schema")
        return schema.get("schema") if isinstance(schema, dict) else None
    return None


def _chosen_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The function the fake "model" calls: `tool_choice`'s, else the first; none for "none"."""
    tools = [t.get("function") for t in body.get("tools") or () if isinstance(t, dict)]
    functions = [f for f in tools if isinstance(f, dict) and isinstance(f.get("name"), str)]
    choice = body.get("tool_choice")
    if not functions or choice == "none":
        return None
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        return next((f for f in functions if f["name"] == wanted), functions[0])
    return functions[0]


class _OpenAICompat:
    def __init__(self, fake: FakeOllama) -> None:
        self.fake = fake

    async def models(self, request: web.BaseRequest) -> web.StreamResponse:
        created = 1735689600  # the catalog's modified_at, 2025-01-01T00:00:00Z
        data = [
            {"id": name, "object": "model", "created": created, "owned_by": "library"}
            for name in self.fake.model_names
        ]
        return _json(200, _wire.dumps({"object": "list", "data": data}))

    async def chat_completions(self, request: web.BaseRequest) -> web.StreamResponse:
        # The same bookkeeping as the fake's `/api/chat`: counted, tracked, cancellable on stop.
        arrived = time.monotonic_ns()
        self.fake.count_arrival()
        with self.fake.in_flight():
            return await self._complete(request, arrived)

    async def _complete(self, request: web.BaseRequest, arrived: int) -> web.StreamResponse:
        raw = await request.read()
        if not raw.strip(_wire.GO_WHITESPACE.encode()):
            return error_response(400, "EOF")
        body = _wire.parse_body(raw, "ChatCompletionRequest")
        if isinstance(body, str):
            return error_response(400, body.replace("api.", "openai."))
        self.fake.record(body)
        problem = _check_fields(body)
        if problem is not None:
            return error_response(400, problem)
        if not body.get("messages"):
            return error_response(400, "[] is too short - 'messages'")
        messages = _messages(body["messages"])
        if isinstance(messages, str):
            return error_response(400, messages)

        stream = body.get("stream") is True
        tool = _chosen_tool(body)
        fmt = (tool.get("parameters") or {}) if tool else _format(body.get("response_format"))
        options = {} if body.get("max_tokens") is None else {"num_predict": body["max_tokens"]}
        # The `/api/chat` request Ollama's middleware makes of it (the fake's /v1 never thinks).
        chat = {
            "model": body.get("model") or "",
            "messages": messages,
            "format": fmt,
            "options": options,
            "think": False,
        }
        reply = await self.fake.reply(request, chat, stream=stream, arrived_ns=arrived)
        if not isinstance(reply, Reply):
            return _converted(reply)

        usage = {
            "prompt_tokens": reply.prompt_eval_count,
            "completion_tokens": reply.eval_count,
            "total_tokens": reply.prompt_eval_count + reply.eval_count,
        }
        text = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        answer = _Answer(reply.model, reply.content, reply.done_reason, tool, text)
        if not stream:
            completion = _wire.dumps(answer.completion(usage))
            if reply.fault == "bad_body":
                return web.Response(
                    body=completion[: len(completion) // 2],
                    headers={"Content-Type": OPENAI_JSON_TYPE},
                )
            return _json(200, completion)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return await answer.stream(request, usage if include_usage else None, reply.fault)


class _Answer:
    """One answer, as a `chat.completion` or as a stream of `chat.completion.chunk`s."""

    def __init__(
        self, model: str, content: str, done_reason: str, tool: dict[str, Any] | None, text: str
    ) -> None:
        self.model = model
        self.id = f"chatcmpl-{zlib.crc32(text.encode()) % 999}"  # Ollama: chatcmpl-<0..998>
        self.created = int(time.time())
        self.finish_reason = done_reason
        self.content = content
        self.tool_calls: list[dict[str, Any]] = []
        if tool is not None and _is_object(content):
            # A reply the fake "model" made as a call; prose (a fault) stays text.
            call_id = f"call_{zlib.crc32(content.encode()):08x}"
            function = {"name": tool["name"], "arguments": content}
            self.tool_calls = [
                {"id": call_id, "index": 0, "type": "function", "function": function}
            ]
            self.content = ""
            self.finish_reason = "tool_calls"

    def _envelope(self, kind: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
        }

    def completion(self, usage: dict[str, int]) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        choice = {"index": 0, "message": message, "finish_reason": self.finish_reason}
        return {**self._envelope("chat.completion"), "choices": [choice], "usage": usage}

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {
            "index": 0,
            "delta": {"role": "assistant", **delta},
            "finish_reason": finish_reason,
        }
        return _wire.dumps({**self._envelope("chat.completion.chunk"), "choices": [choice]})

    async def stream(
        self, request: web.BaseRequest, usage: dict[str, int] | None, fault: str | None
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": SSE_TYPE})
        await response.prepare(request)
        pieces = [_event(self._chunk({"content": p})) for p in _wire.fragments(self.content)]
        if self.tool_calls:
            pieces.append(_event(self._chunk({"content": "", "tool_calls": self.tool_calls})))
        last = self._chunk({"content": ""}, self.finish_reason)
        events: list[bytes]
        if fault == "bad_body":
            events = [_event(last[: len(last) // 2])]
        elif fault == "stream_error":
            events = [*pieces[:2], _event(error_body(500, _wire.STREAM_ERROR))]
        elif fault == "stream_cut":
            events = pieces
        else:
            events = [*pieces, _event(last)]
            if usage is not None:
                envelope = self._envelope("chat.completion.chunk")
                events.append(_event(_wire.dumps({**envelope, "choices": [], "usage": usage})))
            events.append(b"data: [DONE]\n\n")
        # One write: clients read events, not HTTP chunks, and this keeps the fake fast.
        await response.write(b"".join(events))
        await response.write_eof()
        return response


def _event(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


def _is_object(content: str) -> bool:
    try:
        return isinstance(json.loads(content), dict)
    except ValueError:
        return False
