"""The fake server's OpenAI-compatible routes (`/v1`), checked on the wire with httpx, against
the fake's own `/api/chat` through the real `ollama` client, and through the real `openai`
client where it is installed (the `bench` extra)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.to_thread
import httpx
import jsonschema
import ollama
import pytest
from fake_openai import mount
from pydantic import BaseModel

from batch.testing import FakeOllama, Fault, FaultKind, count_tokens

MODEL = "fake-model"
TIMEOUT = httpx.Timeout(10.0)
SYSTEM = {"role": "system", "content": "You label product reviews."}
USER = {"role": "user", "content": "The battery died after two days"}
LABEL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"label": {"enum": ["positive", "negative", "neutral"]}},
    "required": ["label"],
}
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "label", "schema": LABEL_SCHEMA}}
STREAM_ERROR = "an error was encountered while running the model: unexpected EOF"


@pytest.fixture
def fake_ollama() -> Iterator[FakeOllama]:
    """The shared fixture's fake, with the `/v1` routes the benchmarks mount."""
    with mount(FakeOllama()) as fake:
        yield fake


def raw(fake: FakeOllama, timeout: httpx.Timeout = TIMEOUT) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=fake.url, timeout=timeout, trust_env=False)


async def post(fake: FakeOllama, **body: Any) -> httpx.Response:
    body.setdefault("model", MODEL)
    body.setdefault("messages", [SYSTEM, USER])
    async with raw(fake) as http:
        return await http.post("/v1/chat/completions", json=body)


def events(response: httpx.Response) -> list[Any]:
    """The `data:` payloads of a server-sent event stream: JSON, or the text `[DONE]`."""
    assert response.headers["content-type"] == "text/event-stream"
    assert response.text.endswith("\n\n")
    out: list[Any] = []
    for event in response.text.split("\n\n")[:-1]:
        assert event.startswith("data: ")
        data = event.removeprefix("data: ")
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def streamed_content(chunks: list[Any]) -> str:
    return "".join(c["choices"][0]["delta"]["content"] for c in chunks if c["choices"])


async def native_chat(fake: FakeOllama, **kwargs: Any) -> ollama.ChatResponse:
    async with ollama.AsyncClient(host=fake.url, timeout=TIMEOUT, trust_env=False) as client:
        reply: ollama.ChatResponse = await client.chat(
            model=MODEL, messages=[SYSTEM, USER], **kwargs
        )
        return reply


def assert_openai_error(response: httpx.Response, status: int, kind: str, message: str) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "error": {"message": message, "type": kind, "param": None, "code": None}
    }


# ---- answers ------------------------------------------------------------------------------------


async def test_completion_with_a_json_schema_matches_api_chat(fake_ollama: FakeOllama) -> None:
    response = await post(fake_ollama, response_format=SCHEMA_FORMAT)
    native = await native_chat(fake_ollama, format=LABEL_SCHEMA)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {
        "id",
        "object",
        "created",
        "model",
        "system_fingerprint",
        "choices",
        "usage",
    }
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == MODEL and body["system_fingerprint"] == "fp_ollama"
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"] == {"role": "assistant", "content": native.message.content}
    jsonschema.validate(json.loads(choice["message"]["content"]), LABEL_SCHEMA)
    assert body["usage"] == {
        "prompt_tokens": native.prompt_eval_count,
        "completion_tokens": native.eval_count,
        "total_tokens": (native.prompt_eval_count or 0) + (native.eval_count or 0),
    }
    assert native.prompt_eval_count == count_tokens(f"{SYSTEM['content']} {USER['content']}")
    assert fake_ollama.request_count == 2
    assert fake_ollama.requests[0]["response_format"] == SCHEMA_FORMAT  # recorded as sent


@pytest.mark.parametrize(
    ("response_format", "native_format"),
    [({"type": "json_object"}, "json"), ({"type": "text"}, None), (None, None)],
)
async def test_other_response_formats(
    fake_ollama: FakeOllama, response_format: dict[str, Any] | None, native_format: str | None
) -> None:
    response = await post(fake_ollama, response_format=response_format)
    native = await native_chat(fake_ollama, format=native_format)
    assert response.json()["choices"][0]["message"]["content"] == native.message.content


async def test_content_parts_become_messages(fake_ollama: FakeOllama) -> None:
    image = "data:image/png;base64,iVBORw0KGgo="
    parts = [
        {"type": "text", "text": "Label this"},
        {"type": "image_url", "image_url": {"url": image}},
        {"type": "text", "text": "review please"},
    ]
    response = await post(fake_ollama, messages=[{"role": "user", "content": parts}])
    body = response.json()
    # The last user message (the second text part) is what the fake answers.
    assert body["choices"][0]["message"]["content"] == "Fake answer to: review please"
    assert body["usage"]["prompt_tokens"] == count_tokens("Label this  review please")


async def test_max_tokens_cuts_the_reply(fake_ollama: FakeOllama) -> None:
    body = (await post(fake_ollama, max_tokens=2)).json()
    assert body["choices"][0]["message"]["content"] == "Fake answer"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2


async def test_streaming_matches_non_streaming(fake_ollama: FakeOllama) -> None:
    plain = (await post(fake_ollama)).json()
    streamed = events(await post(fake_ollama, stream=True))
    assert streamed[-1] == "[DONE]"
    *chunks, last = streamed[:-1]
    assert len(chunks) >= 2
    for chunk in [*chunks, last]:
        assert chunk["object"] == "chat.completion.chunk" and "usage" not in chunk
        assert chunk["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)
    assert last["choices"][0] == {
        "index": 0,
        "delta": {"role": "assistant", "content": ""},
        "finish_reason": "stop",
    }
    assert streamed_content(chunks) == plain["choices"][0]["message"]["content"]
    assert len({c["id"] for c in streamed[:-1]}) == 1


async def test_streaming_usage_when_asked(fake_ollama: FakeOllama) -> None:
    plain = (await post(fake_ollama)).json()
    streamed = events(await post(fake_ollama, stream=True, stream_options={"include_usage": True}))
    *_, usage_chunk, done = streamed
    assert done == "[DONE]"
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == plain["usage"]


TOOL = {
    "type": "function",
    "function": {"name": "final_result", "description": "The label", "parameters": LABEL_SCHEMA},
}
OTHER_TOOL = {
    "type": "function",
    "function": {"name": "other", "parameters": {"type": "object", "properties": {}}},
}


async def test_tools_get_a_conforming_call(fake_ollama: FakeOllama) -> None:
    body = (await post(fake_ollama, tools=[TOOL, OTHER_TOOL], tool_choice="required")).json()
    [choice] = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] == ""
    [call] = message["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "final_result"
    arguments = call["function"]["arguments"]
    jsonschema.validate(json.loads(arguments), LABEL_SCHEMA)
    assert body["usage"]["completion_tokens"] == count_tokens(arguments)

    named = {"type": "function", "function": {"name": "other"}}
    body = (await post(fake_ollama, tools=[TOOL, OTHER_TOOL], tool_choice=named)).json()
    assert body["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "other"
    body = (await post(fake_ollama, tools=[TOOL], tool_choice="none")).json()
    assert "tool_calls" not in body["choices"][0]["message"]

    streamed = events(await post(fake_ollama, tools=[TOOL], stream=True))
    calls = [c for c in streamed[:-1] if c["choices"][0]["delta"].get("tool_calls")]
    assert len(calls) == 1 and streamed[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert calls[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] == arguments


async def test_models(fake_ollama: FakeOllama) -> None:
    async with raw(fake_ollama) as http:
        response = await http.get("/v1/models")
    assert response.json() == {
        "object": "list",
        "data": [
            {
                "id": f"{MODEL}:latest",
                "object": "model",
                "created": 1735689600,
                "owned_by": "library",
            }
        ],
    }


# ---- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "EOF"),
        (b'{"model": "fake-model", ', "unexpected EOF"),
        (b"[1]", "json: cannot unmarshal array into Go value of type openai.ChatCompletionRequest"),
        (
            b'{"model": 3}',
            "json: cannot unmarshal number into Go struct field ChatCompletionRequest.model "
            "of type string",
        ),
        (b'{"model": "fake-model", "messages": []}', "[] is too short - 'messages'"),
        (
            b'{"model": "fake-model", "messages": [{"role": "user", "content": 2}]}',
            "invalid message content type: float64",
        ),
        (
            b'{"model": "fake-model", "messages": [{"role": "user", "content": '
            b'[{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}',
            "invalid image input",
        ),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model is required"),
    ],
)
async def test_bad_requests_are_400(fake_ollama: FakeOllama, body: bytes, message: str) -> None:
    async with raw(fake_ollama) as http:
        response = await http.post("/v1/chat/completions", content=body)
    assert_openai_error(response, 400, "invalid_request_error", message)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("kind", "status", "error_type", "message"),
    [
        (
            "busy",
            503,
            "api_error",
            "server busy, please try again.  maximum pending requests exceeded",
        ),
        ("rate_limit", 429, "api_error", "too many requests"),
        ("unknown_model", 404, "not_found_error", "model 'fake-model' not found"),
    ],
)
async def test_http_error_faults(
    fake_ollama: FakeOllama,
    kind: FaultKind,
    status: int,
    error_type: str,
    message: str,
    stream: bool,
) -> None:
    fake_ollama.add_fault(Fault(kind))
    assert_openai_error(await post(fake_ollama, stream=stream), status, error_type, message)


async def test_a_proxy_error_passes_through(fake_ollama: FakeOllama) -> None:
    fake_ollama.add_fault(Fault("bad_gateway"))
    response = await post(fake_ollama)
    assert response.status_code == 502 and response.headers["content-type"] == "text/html"
    assert "502 Bad Gateway" in response.text


async def test_unsatisfiable_schema_is_a_500(fake_ollama: FakeOllama) -> None:
    endless = {"type": "object", "properties": {"next": {"$ref": "#"}}, "required": ["next"]}
    response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": endless}}
    response = await post(fake_ollama, response_format=response_format)
    assert response.status_code == 500 and response.json()["error"]["type"] == "api_error"


@pytest.mark.parametrize("stream", [False, True])
async def test_drop_disconnects(fake_ollama: FakeOllama, stream: bool) -> None:
    fake_ollama.add_fault(Fault("drop"))
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        await post(fake_ollama, stream=stream)
    assert (await post(fake_ollama)).status_code == 200  # used up


async def test_hang_never_answers(fake_ollama: FakeOllama) -> None:
    fake_ollama.add_fault(Fault("hang"))
    async with raw(fake_ollama, httpx.Timeout(10.0, read=0.2)) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/v1/chat/completions", json={"model": MODEL, "messages": [USER]})


async def test_content_faults(fake_ollama: FakeOllama) -> None:
    def message(response: httpx.Response) -> dict[str, Any]:
        choice: dict[str, Any] = response.json()["choices"][0]
        return choice

    fake_ollama.add_fault(Fault("prose"))
    prose = message(await post(fake_ollama, response_format=SCHEMA_FORMAT))
    assert prose["message"]["content"].startswith("Sure!")

    fake_ollama.add_fault(Fault("prose"))
    prose = message(await post(fake_ollama, tools=[TOOL]))  # a model that ignores the tool
    assert prose["message"]["content"].startswith("Sure!") and prose["finish_reason"] == "stop"
    assert "tool_calls" not in prose["message"]

    fake_ollama.add_fault(Fault("schema_violation"))
    violating = message(await post(fake_ollama, tools=[TOOL]))
    arguments = violating["message"]["tool_calls"][0]["function"]["arguments"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(json.loads(arguments), LABEL_SCHEMA)

    fake_ollama.add_fault(Fault("truncate"))
    truncated = message(await post(fake_ollama, response_format=SCHEMA_FORMAT))
    assert truncated["finish_reason"] == "length"
    with pytest.raises(json.JSONDecodeError):
        json.loads(truncated["message"]["content"])

    fake_ollama.add_fault(Fault("no_counts"))
    uncounted = await post(fake_ollama)
    assert uncounted.json()["usage"] == {
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
    }

    fake_ollama.add_fault(Fault("bad_body"))
    with pytest.raises(json.JSONDecodeError):
        (await post(fake_ollama)).json()


async def test_stream_faults(fake_ollama: FakeOllama) -> None:
    fake_ollama.add_fault(Fault("stream_error", times=2))
    streamed = events(await post(fake_ollama, stream=True))
    *chunks, error = streamed
    assert len(chunks) == 2 and all(c["choices"][0]["finish_reason"] is None for c in chunks)
    assert error == {
        "error": {"message": STREAM_ERROR, "type": "api_error", "param": None, "code": None}
    }
    assert_openai_error(await post(fake_ollama), 500, "api_error", STREAM_ERROR)

    fake_ollama.add_fault(Fault("stream_cut"))
    cut = events(await post(fake_ollama, stream=True, stream_options={"include_usage": True}))
    assert cut and "[DONE]" not in cut
    assert all(c["choices"][0]["finish_reason"] is None for c in cut)

    fake_ollama.add_fault(Fault("bad_body"))
    response = await post(fake_ollama, stream=True)
    [event] = response.text.split("\n\n")[:-1]
    with pytest.raises(json.JSONDecodeError):
        json.loads(event.removeprefix("data: "))


async def test_faults_match_the_last_user_message(fake_ollama: FakeOllama) -> None:
    fake_ollama.add_fault(Fault("crash", match="poison", times=None))
    assert (
        await post(fake_ollama, messages=[{"role": "user", "content": "poison"}])
    ).status_code == 500
    messages = [{"role": "system", "content": "poison"}, USER]
    assert (await post(fake_ollama, messages=messages)).status_code == 200


# ---- shared with /api/chat ----------------------------------------------------------------------


async def test_slots_and_counters_are_shared_with_api_chat() -> None:
    with mount(FakeOllama(slots=2, latency=0.02, record_requests=False)) as fake:
        async with (
            raw(fake) as http,
            ollama.AsyncClient(host=fake.url, timeout=TIMEOUT, trust_env=False) as native,
            anyio.create_task_group() as tg,
        ):

            async def one(i: int) -> None:
                messages = [{"role": "user", "content": f"row {i}"}]
                if i % 2:
                    await native.chat(model=MODEL, messages=messages)
                else:
                    body = {"model": MODEL, "messages": messages}
                    (await http.post("/v1/chat/completions", json=body)).raise_for_status()

            for i in range(10):
                tg.start_soon(one, i)
        assert fake.request_count == 10 and fake.requests == []
        assert 1 <= fake.max_generating <= 2


async def test_stop_is_prompt_with_a_hung_request() -> None:
    fake = mount(FakeOllama())
    fake.start()
    fake.add_fault(Fault("hang"))
    async with raw(fake) as http, anyio.create_task_group() as tg:

        async def hung() -> None:
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                await http.post("/v1/chat/completions", json={"model": MODEL, "messages": [USER]})

        tg.start_soon(hung)
        await anyio.to_thread.run_sync(fake.wait_for_requests, 1)
        with anyio.fail_after(5):
            await anyio.to_thread.run_sync(fake.stop)


# ---- the real openai client (installed by the `bench` extra) ------------------------------------


class Label(BaseModel):
    label: str


async def test_through_the_openai_client(fake_ollama: FakeOllama) -> None:
    openai = pytest.importorskip("openai")
    async with openai.AsyncOpenAI(
        base_url=f"{fake_ollama.url}/v1", api_key="ollama", max_retries=0, timeout=10.0
    ) as client:
        completion = await client.chat.completions.create(
            model=MODEL, messages=[SYSTEM, USER], response_format=SCHEMA_FORMAT
        )
        assert completion.choices[0].finish_reason == "stop"
        Label.model_validate_json(completion.choices[0].message.content or "")
        assert completion.usage is not None and completion.usage.total_tokens > 0

        stream = await client.chat.completions.create(
            model=MODEL, messages=[USER], stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "Fake answer to: The battery died after two days"
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == count_tokens(text)

        fake_ollama.add_fault(Fault("busy"))
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model=MODEL, messages=[USER])
        assert info.value.status_code == 503 and "server busy" in info.value.message

        fake_ollama.add_fault(Fault("stream_error"))
        stream = await client.chat.completions.create(model=MODEL, messages=[USER], stream=True)
        with pytest.raises(openai.APIError, match="unexpected EOF"):
            async for _ in stream:
                pass
