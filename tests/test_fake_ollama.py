"""The fake Ollama server, driven through the real `ollama` clients (see ollama-api.md)."""

from __future__ import annotations

import importlib.util
import json
import signal
import socket
import sys
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.to_thread
import httpx
import jsonschema
import ollama
import pytest
from pydantic import BaseModel, Field

from batch.testing import FakeOllama, Fault, FaultKind, count_tokens
from batch.testing.fake_ollama import CURRENT_VERSION, GO_RUNNER_VERSION
from batch.testing.schema_instance import SchemaError, compile_schema, schema_key

MODEL = "fake-model"
TIMEOUT = httpx.Timeout(10.0)
SYSTEM = {"role": "system", "content": "You label product reviews."}
USER = {"role": "user", "content": "The battery died after two days"}
LABEL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"label": {"enum": ["positive", "negative", "neutral"]}},
    "required": ["label"],
}
SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "fake_ollama.py"
STREAM_ERROR = "an error was encountered while running the model: unexpected EOF"


def client(fake: FakeOllama, timeout: httpx.Timeout = TIMEOUT) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=fake.url, timeout=timeout, trust_env=False)


def raw(fake: FakeOllama) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=fake.url, timeout=TIMEOUT, trust_env=False)


async def chat(
    fake: FakeOllama, prompt: str = USER["content"], **kwargs: Any
) -> ollama.ChatResponse:
    async with client(fake) as c:
        messages = [{"role": "user", "content": prompt}]
        reply: ollama.ChatResponse = await c.chat(model=MODEL, messages=messages, **kwargs)
        return reply


async def chat_stream(fake: FakeOllama, **kwargs: Any) -> list[ollama.ChatResponse]:
    async with client(fake) as c:
        stream = await c.chat(model=MODEL, messages=[SYSTEM, USER], stream=True, **kwargs)
        return [part async for part in stream]


# ---- normal answers ---------------------------------------------------------------------------


async def test_chat_non_streaming(fake_ollama: FakeOllama) -> None:
    async with client(fake_ollama) as c:
        reply = await c.chat(model=MODEL, messages=[SYSTEM, USER])
    assert reply.message.role == "assistant"
    assert reply.message.content == "Fake answer to: The battery died after two days"
    assert reply.done and reply.done_reason == "stop"
    assert reply.prompt_eval_count == count_tokens(f"{SYSTEM['content']} {USER['content']}")
    assert reply.eval_count == count_tokens(reply.message.content)
    durations = [reply.load_duration, reply.prompt_eval_duration, reply.eval_duration]
    assert all(isinstance(d, int) and d > 0 for d in durations)
    assert isinstance(reply.total_duration, int)
    assert reply.total_duration >= sum(d for d in durations if d is not None)
    assert fake_ollama.request_count == 1
    assert fake_ollama.requests[0]["messages"] == [SYSTEM, USER]
    assert fake_ollama.requests[0]["stream"] is False


async def test_chat_streaming_matches_non_streaming(fake_ollama: FakeOllama) -> None:
    parts = await chat_stream(fake_ollama)
    *chunks, last = parts
    assert len(chunks) >= 2
    assert not any(p.done for p in chunks) and all(p.message.content for p in chunks)
    assert last.done and last.done_reason == "stop" and last.message.content == ""
    content = "".join(p.message.content or "" for p in chunks)
    assert content == "Fake answer to: The battery died after two days"
    assert last.eval_count == count_tokens(content)
    assert last.prompt_eval_count == count_tokens(f"{SYSTEM['content']} {USER['content']}")


def test_generate_with_the_sync_client(fake_ollama: FakeOllama) -> None:
    with ollama.Client(host=fake_ollama.url, timeout=TIMEOUT, trust_env=False) as c:
        reply = c.generate(model=f"{MODEL}:latest", prompt="Is it good?", system="Be brief.")
        parts = list(c.generate(model=MODEL, prompt="Is it good?", stream=True))
    assert reply.response == "Fake answer to: Is it good?"
    assert reply.prompt_eval_count == count_tokens("Be brief. Is it good?")
    assert reply.eval_count == count_tokens(reply.response)
    assert "".join(p.response or "" for p in parts) == reply.response
    assert parts[-1].done and not parts[0].done


async def test_wire_format(fake_ollama: FakeOllama) -> None:
    body = {"model": MODEL, "messages": [USER]}
    async with raw(fake_ollama) as http:
        plain = await http.post("/api/chat", json={**body, "stream": False})
        streamed = await http.post("/api/chat", json=body)  # stream omitted: true
        generated = await http.post(
            "/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False}
        )
    assert plain.headers["content-type"] == "application/json; charset=utf-8"
    metrics = {"total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration"}
    metrics |= {"eval_count", "eval_duration"}
    common = {"model", "created_at", "done", "done_reason"} | metrics
    assert set(plain.json()) == common | {"message"}
    assert set(generated.json()) == common | {"response"}
    assert plain.json()["created_at"].endswith("Z")
    assert streamed.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in streamed.text.splitlines()]
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    assert set(lines[0]) == {"model", "created_at", "message", "done"}


async def test_empty_conversation_just_loads(fake_ollama: FakeOllama) -> None:
    async with client(fake_ollama) as c:
        reply = await c.chat(model=MODEL, messages=[])
    assert reply.done_reason == "load" and reply.message.content == ""


class Sentiment(StrEnum):
    positive = "positive"
    negative = "negative"
    neutral = "neutral"


class Aspect(BaseModel):
    name: str
    score: int = Field(ge=1, le=5)


class Review(BaseModel):
    sentiment: Sentiment
    confidence: float = Field(ge=0, le=1)
    topic: Literal["battery", "screen", "price"]
    aspects: list[Aspect]
    best: Aspect
    summary: str | None = None


async def test_structured_output_for_a_pydantic_model(fake_ollama: FakeOllama) -> None:
    schema = Review.model_json_schema()
    assert "$defs" in schema  # the nested model comes by $ref
    sentiments = set()
    async with client(fake_ollama) as c:
        for i in range(12):
            messages = [{"role": "user", "content": f"review number {i}"}]
            reply = await c.chat(model=MODEL, messages=messages, format=schema)
            content = reply.message.content or ""
            review = Review.model_validate_json(content)
            jsonschema.validate(json.loads(content), schema)
            assert len(review.aspects) == 1
            sentiments.add(review.sentiment)
            again = await c.chat(model=MODEL, messages=messages, format=schema)
            assert again.message.content == content  # deterministic per prompt
    assert len(sentiments) > 1  # the prompt picks the label


HAND_WRITTEN: dict[str, Any] = {
    "$defs": {"Span": {"type": "object", "properties": {"start": {"type": "integer"}}}},
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["spam", "ham"]},
        "kind": {"const": "email"},
        "score": {"type": ["number", "null"], "minimum": 0.5, "maximum": 0.75},
        "count": {"type": "integer", "exclusiveMinimum": 10, "maximum": 12},
        "flag": {"type": "boolean"},
        "nothing": {"type": "null"},
        "span": {"$ref": "#/$defs/Span"},
        "maybe": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/Span"}]},
        "one": {"oneOf": [{"type": "string", "maxLength": 3}, {"type": "integer"}]},
        "words": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "when": {"type": "string", "format": "date-time"},
    },
    "required": ["label", "score"],
    "additionalProperties": False,
}


async def test_structured_output_for_a_hand_written_schema(fake_ollama: FakeOllama) -> None:
    reply = await chat(fake_ollama, format=HAND_WRITTEN)
    value = json.loads(reply.message.content or "")
    jsonschema.validate(value, HAND_WRITTEN)
    assert set(value) == set(HAND_WRITTEN["properties"])  # optional properties included
    assert value["maybe"] is not None  # anyOf: the first non-null branch
    assert reply.message.content == json.dumps(value, separators=(",", ":"))  # compact


class Tree(BaseModel):
    name: str
    children: list[Tree] = []
    parent: Tree | None = None


@pytest.mark.parametrize(
    "schema",
    [
        Tree.model_json_schema(),
        {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}]},
        {"type": "integer", "minimum": -3, "maximum": -3},
        {"type": "string", "minLength": 12},
        {},
    ],
)
def test_schema_instances_conform(schema: dict[str, Any]) -> None:
    compiled = compile_schema(schema_key(schema))
    for seed in range(5):
        jsonschema.validate(json.loads(compiled.instance(seed)), schema)


async def test_unsatisfiable_schema_is_a_500(fake_ollama: FakeOllama) -> None:
    endless = {"type": "object", "properties": {"next": {"$ref": "#"}}, "required": ["next"]}
    with pytest.raises(SchemaError):
        compile_schema(schema_key(endless))
    with pytest.raises(ollama.ResponseError) as info:
        await chat(fake_ollama, format=endless)
    assert info.value.status_code == 500


async def test_json_mode_and_plain_text(fake_ollama: FakeOllama) -> None:
    answer = json.loads((await chat(fake_ollama, format="json")).message.content or "")
    assert set(answer) == {"answer"}
    async with raw(fake_ollama) as http:  # the client itself refuses other formats
        response = await http.post(
            "/api/chat", json={"model": MODEL, "messages": [USER], "format": "yaml"}
        )
    assert response.status_code == 400
    assert response.json() == {"error": 'invalid format: expected "json" or a valid JSON schema'}


async def test_num_predict_cuts_the_reply(fake_ollama: FakeOllama) -> None:
    reply = await chat(fake_ollama, options={"num_predict": 2})
    assert reply.message.content == "Fake answer"
    assert reply.done_reason == "length" and reply.eval_count == 2


async def test_prompt_count_is_capped_at_the_context() -> None:
    long_prompt = " ".join(["word"] * 50)
    with FakeOllama(context_length=40, version=GO_RUNNER_VERSION) as fake:  # cut to num_ctx
        assert (await chat(fake, long_prompt)).prompt_eval_count == 40
        assert (await chat(fake, long_prompt, options={"num_ctx": 8})).prompt_eval_count == 8


async def test_responder_supplies_content_under_faults(fake_ollama: FakeOllama) -> None:
    fake_ollama.responder = lambda body: json.dumps({"label": body["messages"][-1]["content"]})
    assert (await chat(fake_ollama, "neutral")).message.content == '{"label": "neutral"}'
    fake_ollama.add_fault(Fault("fenced"))
    assert (await chat(fake_ollama, "x")).message.content == '```json\n{"label": "x"}\n```'

    def broken(body: dict[str, Any]) -> str:
        raise KeyError("oops")

    fake_ollama.responder = broken
    with pytest.raises(ollama.ResponseError) as info:
        await chat(fake_ollama)
    assert info.value.status_code == 500 and "KeyError" in info.value.error


# ---- errors the real server gives ------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", "missing request body"),
        (b"  \n", "missing request body"),
        (b'{"model": "fake-model", ', "unexpected EOF"),
        (b"{model: 1}", "invalid character 'm' looking for beginning of object key string"),
        (b"[1]", "json: cannot unmarshal array into Go value of type api.ChatRequest"),
        (
            b'{"model": 3}',
            "json: cannot unmarshal number into Go struct field ChatRequest.model of type string",
        ),
        (b'{"messages": []}', "model is required"),
    ],
)
async def test_bad_requests_are_400(fake_ollama: FakeOllama, body: bytes, error: str) -> None:
    async with raw(fake_ollama) as http:
        response = await http.post("/api/chat", content=body)
    assert response.status_code == 400
    assert response.json() == {"error": error}


async def test_unknown_model_is_404(fake_ollama: FakeOllama) -> None:
    async with client(fake_ollama) as c:
        with pytest.raises(ollama.ResponseError) as info:
            await c.chat(model="nope", messages=[USER])
        assert (info.value.status_code, info.value.error) == (404, "model 'nope' not found")
        with pytest.raises(ollama.ResponseError) as info:
            await c.show("nope")
        assert (info.value.status_code, info.value.error) == (404, "model 'nope' not found")


async def test_other_routes(fake_ollama: FakeOllama) -> None:
    async with raw(fake_ollama) as http:
        root = await http.get("/")
        head = await http.head("/")
        version = await http.get("/api/version")
        missing = await http.get("/api/nothing")
        wrong_method = await http.get("/api/chat")
    assert (root.status_code, root.text) == (200, "Ollama is running")
    assert root.headers["content-type"].startswith("text/plain")
    assert (head.status_code, head.text) == (200, "")
    assert version.json() == {"version": CURRENT_VERSION}
    assert (missing.status_code, missing.text) == (404, "404 page not found")
    # Ollama's router answers a wrong method with 405 (gin's HandleMethodNotAllowed).
    assert (wrong_method.status_code, wrong_method.text) == (405, "405 method not allowed")
    for response in (missing, wrong_method):
        assert response.headers["content-type"].startswith("text/plain")

    async with client(fake_ollama) as c:
        tags = await c.list()
        assert [m.model for m in tags.models] == [f"{MODEL}:latest"]
        assert tags.models[0].details is not None
        assert tags.models[0].details.quantization_level
        assert (await c.ps()).models == []
        await c.chat(model=MODEL, messages=[USER])
        assert [m.model for m in (await c.ps()).models] == [f"{MODEL}:latest"]
        shown = await c.show(MODEL)
    assert shown.capabilities == ["completion"]
    assert shown.modelinfo is not None
    assert shown.modelinfo["general.architecture"] == "fakearch"
    assert shown.modelinfo["fakearch.context_length"] == 4096


# ---- faults -------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("kind", "status", "error"),
    [
        ("busy", 503, "server busy, please try again.  maximum pending requests exceeded"),
        (
            "crash",
            500,
            "model runner has unexpectedly stopped, this may be due to resource limitations "
            "or an internal error, check ollama server logs for details",
        ),
        ("rate_limit", 429, "too many requests"),
        ("bad_gateway", 502, "502 Bad Gateway"),
        ("gateway_timeout", 504, "upstream request timeout"),
        ("unknown_model", 404, "model 'fake-model' not found"),
    ],
)
async def test_http_error_faults(
    fake_ollama: FakeOllama, kind: FaultKind, status: int, error: str, stream: bool
) -> None:
    fake_ollama.add_fault(Fault(kind))
    with pytest.raises(ollama.ResponseError) as info:
        if stream:
            await chat_stream(fake_ollama)
        else:
            await chat(fake_ollama)
    assert info.value.status_code == status
    assert error in info.value.error
    if kind != "bad_gateway":
        assert info.value.error == error


@pytest.mark.parametrize("stream", [False, True])
async def test_drop_disconnects(fake_ollama: FakeOllama, stream: bool) -> None:
    fake_ollama.add_fault(Fault("drop"))
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        if stream:
            await chat_stream(fake_ollama)
        else:
            await chat(fake_ollama)
    await chat(fake_ollama)  # used up: the next request is fine


async def test_hang_never_answers(fake_ollama: FakeOllama) -> None:
    fake_ollama.add_fault(Fault("hang"))
    async with client(fake_ollama, timeout=httpx.Timeout(10.0, read=0.2)) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.chat(model=MODEL, messages=[USER])


async def test_content_faults(fake_ollama: FakeOllama) -> None:
    fake_ollama.add_fault(Fault("prose"))
    prose = await chat(fake_ollama, format=LABEL_SCHEMA)
    assert (prose.message.content or "").startswith("Sure!")

    fake_ollama.add_fault(Fault("fenced"))
    fenced = (await chat(fake_ollama, format=LABEL_SCHEMA)).message.content or ""
    assert fenced.startswith("```json\n") and fenced.endswith("\n```")
    jsonschema.validate(json.loads(fenced[len("```json\n") : -len("\n```")]), LABEL_SCHEMA)

    for schema in (LABEL_SCHEMA, HAND_WRITTEN, {"type": "string"}):
        fake_ollama.add_fault(Fault("schema_violation"))
        violating = json.loads((await chat(fake_ollama, format=schema)).message.content or "")
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(violating, schema)

    fake_ollama.add_fault(Fault("truncate"))
    truncated = await chat(fake_ollama, format=LABEL_SCHEMA)
    assert truncated.done_reason == "length"
    with pytest.raises(json.JSONDecodeError):
        json.loads(truncated.message.content or "")

    fake_ollama.add_fault(Fault("no_counts"))
    uncounted = await chat(fake_ollama)
    assert uncounted.message.content and uncounted.total_duration
    assert uncounted.prompt_eval_count is None and uncounted.prompt_eval_duration is None
    assert uncounted.eval_count is None and uncounted.eval_duration is None


async def test_stream_error(fake_ollama: FakeOllama) -> None:
    fake_ollama.add_fault(Fault("stream_error", times=2))
    parts: list[ollama.ChatResponse] = []
    async with client(fake_ollama) as c:
        stream = await c.chat(model=MODEL, messages=[USER], stream=True)
        with pytest.raises(ollama.ResponseError) as info:
            async for part in stream:
                parts.append(part)
    assert (info.value.status_code, info.value.error) == (-1, STREAM_ERROR)
    assert len(parts) == 2 and not any(p.done for p in parts)

    with pytest.raises(ollama.ResponseError) as info:
        await chat(fake_ollama)
    assert (info.value.status_code, info.value.error) == (500, STREAM_ERROR)


async def test_stream_cut(fake_ollama: FakeOllama) -> None:
    fake_ollama.add_fault(Fault("stream_cut", times=2))
    parts = await chat_stream(fake_ollama, format=LABEL_SCHEMA)
    assert parts and not any(p.done for p in parts)  # no done:true chunk, and no error

    cut = await chat(fake_ollama, format=LABEL_SCHEMA)
    assert cut.done_reason == "length"
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut.message.content or "")


@pytest.mark.parametrize("stream", [False, True])
async def test_bad_body(fake_ollama: FakeOllama, stream: bool) -> None:
    fake_ollama.add_fault(Fault("bad_body"))
    with pytest.raises(json.JSONDecodeError):
        if stream:
            await chat_stream(fake_ollama)
        else:
            await chat(fake_ollama)


async def test_times_and_match(fake_ollama: FakeOllama) -> None:
    async def status(prompt: str) -> int:
        try:
            await chat(fake_ollama, prompt)
        except ollama.ResponseError as exc:
            return exc.status_code
        return 200

    fake_ollama.add_fault(Fault("rate_limit", match="row 1"))
    fake_ollama.add_fault(Fault("busy", times=2))
    fake_ollama.add_fault(Fault("crash", match="poison", times=None))
    # First live match wins; each rule is used up after `times` matching requests.
    assert [await status(p) for p in ("row 1", "row 1", "row 2")] == [429, 503, 503]
    assert [await status(p) for p in ("row 1", "poison", "poison", "fine")] == [200, 500, 500, 200]

    # `match` looks at the last user message only.
    async with client(fake_ollama) as c:
        messages = [{"role": "system", "content": "poison"}, USER]
        assert (await c.chat(model=MODEL, messages=messages)).done
    fake_ollama.clear_faults()
    assert await status("poison") == 200


def test_add_fault_validates() -> None:
    fake = FakeOllama()
    with pytest.raises(ValueError, match="unknown fault kind"):
        fake.add_fault(Fault("boom"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="times"):
        fake.add_fault(Fault("busy", times=0))


# ---- concurrency and lifecycle -----------------------------------------------------------------


async def test_slots_bound_generation() -> None:
    with FakeOllama(slots=2, latency=0.02, record_requests=False) as fake:
        async with client(fake) as c, anyio.create_task_group() as tg:

            async def one(i: int) -> None:
                await c.chat(model=MODEL, messages=[{"role": "user", "content": f"row {i}"}])

            for i in range(10):
                tg.start_soon(one, i)
        assert fake.request_count == 10 and fake.requests == []
        assert 1 <= fake.max_generating <= 2
        assert fake.max_generating <= fake.max_in_flight <= 10


async def test_stop_is_prompt_with_a_hung_request() -> None:
    fake = FakeOllama()
    url = fake.start()
    port = int(url.rsplit(":", 1)[1])
    fake.add_fault(Fault("hang"))
    async with client(fake) as c, anyio.create_task_group() as tg:

        async def hung() -> None:
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                await c.chat(model=MODEL, messages=[USER])

        tg.start_soon(hung)
        await anyio.to_thread.run_sync(fake.wait_for_requests, 1)
        # A generous bound: without cancelling the handler, stop would wait out the hour.
        with anyio.fail_after(5):
            await anyio.to_thread.run_sync(fake.stop)
    fake.stop()  # idempotent
    with FakeOllama(port=port) as again:  # the port is free
        assert again.url == url


def test_start_fails_on_a_taken_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        with pytest.raises(OSError):
            FakeOllama(port=sock.getsockname()[1]).start()


def test_the_scripts_flags_shape_the_fake_as_the_class_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # as Python does for a script
    spec = importlib.util.spec_from_file_location("fake_ollama_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = [
        *("--model", "m", "--server-version", "0.12.0", "--no-context-shift"),
        *("--vision-model", "v", "--thinking-model", "t", "--no-model-info"),
        "--check-host-header",
    ]
    fake = script.fake_from(script.build_parser().parse_args(args))
    with fake, httpx.Client(base_url=fake.url, trust_env=False) as http:
        assert http.get("/api/version").json() == {"version": "0.12.0"}
        vision = http.post("/api/show", json={"model": "v"}).json()
        assert "vision" in vision["capabilities"] and "model_info" not in vision
        assert "thinking" in http.post("/api/show", json={"model": "t"}).json()["capabilities"]
        assert http.get("/api/tags", headers={"Host": "example.com"}).status_code == 403
    default = script.fake_from(script.build_parser().parse_args([]))
    assert (default.version, default.context_shift) == (CURRENT_VERSION, True)


@pytest.mark.slow
async def test_script_serves_until_sigterm() -> None:
    command = [
        sys.executable,
        str(SCRIPT),
        "--port",
        "0",
        "--model",
        "m2",
        "--fault",
        "rate_limit::1",
    ]
    async with await anyio.open_process(command) as process:
        assert process.stdout is not None
        line = b""
        with anyio.fail_after(20):
            while not line.endswith(b"\n"):
                line += await process.stdout.receive(1)
        assert line.startswith(b"listening on http://127.0.0.1:")
        url = line.decode().split()[-1]
        async with ollama.AsyncClient(host=url, timeout=TIMEOUT, trust_env=False) as c:
            with pytest.raises(ollama.ResponseError) as info:
                await c.chat(model="m2", messages=[USER])
            assert info.value.status_code == 429
            assert (await c.chat(model="m2", messages=[USER])).done
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(10):
            assert await process.wait() == 0
        assert process.stdout is not None
        rest = b""
        async for chunk in process.stdout:
            rest += chunk
        assert rest == b""  # exactly one line
