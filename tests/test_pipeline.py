"""The pipeline's logic through the library API, with a backend fake at the seam."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from batch import FatalRunError, JobConfig, run_job
from batch.core.chat import ChatRequest, Completion
from batch.core.errors import Cause, ConfigError, ErrorKind, Rejected, Transient
from batch.testing import FunctionBackend, completion
from tests.conftest import read_jsonl, write_rows

SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": ["pos", "neg"]}},
    "required": ["label"],
}


@pytest.fixture
def job(tmp_path: Path) -> Callable[..., JobConfig]:
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))

    def make(n: int = 3, **settings: Any) -> JobConfig:
        settings.setdefault("schema_ref", str(schema))
        return JobConfig(
            input=write_rows(tmp_path / "in.jsonl", n), model="m", backoff=0, **settings
        )

    return make


def scripted(*answers: Completion | Exception) -> Callable[[ChatRequest], Completion | Exception]:
    """Answers in order, then repeats the last."""
    queue = list(answers)

    def reply(_: ChatRequest) -> Completion | Exception:
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return reply


async def test_valid_rows_are_written_with_output_and_usage(job: Callable[..., JobConfig]) -> None:
    config = job(3)
    backend = FunctionBackend(scripted(completion('{"label": "pos"}', tokens=(10, 4))))
    summary = await run_job(config, backends=[backend])
    rows = read_jsonl(config.output_path)
    assert sorted(r["id"] for r in rows) == [0, 1, 2]
    assert all(r["status"] == "ok" and r["output"] == {"label": "pos"} for r in rows)
    assert all(r["attempts"] == 1 for r in rows)
    assert all(r["usage"] == {"requests": 1, "input_tokens": 10, "output_tokens": 4} for r in rows)
    assert summary.rows.model_dump() == {
        "total": 3,
        "ok": 3,
        "error": 0,
        "skipped": 0,
        "changed": 0,
        "not_in_input": 0,
        "pruned": 0,
    }
    assert summary.as_record()["usage"] == {"requests": 3, "input_tokens": 30, "output_tokens": 12}
    assert backend.requests[0].format == SCHEMA
    on_disk = json.loads(config.summary_path.read_text())
    assert on_disk["rows"] == summary.rows.model_dump()


async def test_transient_failures_are_retried_and_counted(job: Callable[..., JobConfig]) -> None:
    config = job(1)
    backend = FunctionBackend(
        scripted(
            Transient(Cause.HTTP_503, "busy", kind=ErrorKind.HTTP),
            Transient(Cause.DISCONNECT, "dropped"),
            completion('{"label": "neg"}'),
        )
    )
    summary = await run_job(config, backends=[backend])
    [row] = read_jsonl(config.output_path)
    assert row["status"] == "ok"
    assert row["attempts"] == 3
    assert row["usage"]["requests"] == 1  # transport failures got no response
    assert summary.as_record()["retries"] == {
        "total": 2,
        "by_cause": {"http_503": 1, "disconnect": 1},
    }


@pytest.mark.parametrize(
    ("bad", "kind"),
    [
        ("Sure! It is positive.", "validation"),
        ('```json\n{"label": "pos"}\n```', "validation"),
        ('{"label": "maybe"}', "validation"),
    ],
)
async def test_invalid_output_is_reasked_with_the_reason(
    job: Callable[..., JobConfig], bad: str, kind: str
) -> None:
    config = job(1)
    backend = FunctionBackend(
        scripted(completion(bad, tokens=(5, 7)), completion('{"label": "pos"}'))
    )
    summary = await run_job(config, backends=[backend])
    [row] = read_jsonl(config.output_path)
    assert row["status"] == "ok" and row["attempts"] == 2
    # Tokens of the rejected reply count too.
    assert row["usage"] == {"requests": 2, "input_tokens": 8, "output_tokens": 9}
    reask = backend.requests[1].messages
    assert reask[-2] == {"role": "assistant", "content": bad}
    assert reask[-1]["role"] == "user"
    assert summary.as_record()["retries"]["by_cause"] == {kind: 1}


async def test_truncated_json_is_reasked_and_reported_when_it_persists(
    job: Callable[..., JobConfig],
) -> None:
    config = job(1, max_attempts=2)
    backend = FunctionBackend(scripted(completion('{"label": "p', done_reason="length")))
    summary = await run_job(config, backends=[backend])
    [row] = read_jsonl(config.output_path)
    assert row["status"] == "error"
    assert row["error"]["type"] == "truncated"
    assert row["error"]["raw"] == '{"label": "p'
    assert row["attempts"] == 2
    assert summary.rows.error == 1


async def test_attempts_are_bounded_and_the_last_raw_output_is_kept(
    job: Callable[..., JobConfig],
) -> None:
    config = job(1, max_attempts=3)
    backend = FunctionBackend(scripted(completion("no idea")))
    await run_job(config, backends=[backend])
    [row] = read_jsonl(config.output_path)
    assert row["status"] == "error" and row["attempts"] == 3
    assert row["error"]["type"] == "validation"
    assert "not JSON" in row["error"]["message"]
    assert row["error"]["raw"] == "no idea"
    assert len(backend.requests) == 3


async def test_a_rejected_request_is_not_retried(job: Callable[..., JobConfig]) -> None:
    config = job(1)
    rejected = Rejected("HTTP 400: the prompt is longer than the context length", status_code=400)
    backend = FunctionBackend(scripted(rejected))
    await run_job(config, backends=[backend])
    [row] = read_jsonl(config.output_path)
    assert row["error"] == {
        "type": "http",
        "message": "HTTP 400: the prompt is longer than the context length",
        "status_code": 400,
    }
    assert row["attempts"] == 1


async def test_a_fatal_error_stops_the_run_without_sending_every_row(
    job: Callable[..., JobConfig],
) -> None:
    config = job(200, concurrency=2)
    backend = FunctionBackend(scripted(FatalRunError("model 'm' is not available")))
    with pytest.raises(FatalRunError, match="model 'm'"):
        await run_job(config, backends=[backend])
    assert len(backend.requests) < 20
    summary = json.loads(config.summary_path.read_text())
    assert summary["fatal"] == "model 'm' is not available"
    assert summary["complete"] is False


async def test_a_host_unreachable_through_every_attempt_stops_the_run(
    job: Callable[..., JobConfig],
) -> None:
    config = job(5, max_attempts=3)
    backend = FunctionBackend(scripted(Transient(Cause.CONNECT, "cannot connect to seam://fake")))
    with pytest.raises(FatalRunError, match="cannot connect to seam://fake after 3 attempts"):
        await run_job(config, backends=[backend])


async def test_never_more_than_concurrency_requests_in_flight(
    job: Callable[..., JobConfig],
) -> None:
    config = job(50, concurrency=3)
    backend = FunctionBackend(scripted(completion('{"label": "pos"}')))
    backend.gate = anyio.Event()

    async def release_when_full() -> None:
        while backend.in_flight < 3:
            await anyio.lowlevel.checkpoint()
        backend.gate.set()  # type: ignore[union-attr]

    async with anyio.create_task_group() as tg:
        tg.start_soon(release_when_full)
        summary = await run_job(config, backends=[backend])
    assert backend.max_in_flight == 3
    assert summary.rows.ok == 50


async def test_rerun_skips_ok_rows_and_retries_failed_ones(job: Callable[..., JobConfig]) -> None:
    config = job(4)

    def first(request: ChatRequest) -> Completion | Exception:
        if "row 2" in request.messages[-1]["content"]:
            return Rejected("HTTP 400: bad", status_code=400)
        return completion('{"label": "pos"}')

    summary = await run_job(config, backends=[FunctionBackend(first)])
    assert summary.rows.model_dump() == {
        "total": 4,
        "ok": 3,
        "error": 1,
        "skipped": 0,
        "changed": 0,
        "not_in_input": 0,
        "pruned": 0,
    }

    second = FunctionBackend(scripted(completion('{"label": "neg"}')))
    summary = await run_job(config, backends=[second])
    assert summary.rows.model_dump() == {
        "total": 4,
        "ok": 1,
        "error": 0,
        "skipped": 3,
        "changed": 0,
        "not_in_input": 0,
        "pruned": 0,
    }
    assert [r.messages[-1]["content"] for r in second.requests] == ["row 2"]
    rows = read_jsonl(config.output_path)
    assert sorted(r["id"] for r in rows) == [0, 1, 2, 3]
    assert all(r["status"] == "ok" for r in rows)


async def test_rerun_skips_ids_of_every_spelling(job: Callable[..., JobConfig]) -> None:
    # 7 and "7" are different rows; quotes, backslashes, non-ASCII and negative ids must be
    # recognised in the output as they were written, or their rows would run twice.
    ids: list[Any] = [7, "7", -3, 'say "hi"', "back\\slash", "café", "", "tab\there", 10**12]
    config = job(0)
    config.input.write_text(
        "".join(json.dumps({"id": i, "prompt": f"row {n}"}) + "\n" for n, i in enumerate(ids))
    )
    await run_job(config, backends=[FunctionBackend(scripted(completion('{"label": "pos"}')))])
    second = FunctionBackend(scripted(completion('{"label": "pos"}')))
    summary = await run_job(config, backends=[second])
    assert summary.rows.model_dump() == {
        "total": len(ids),
        "ok": 0,
        "error": 0,
        "skipped": len(ids),
        "changed": 0,
        "not_in_input": 0,
        "pruned": 0,
    }
    assert second.requests == []
    assert [r["id"] for r in read_jsonl(config.output_path)].count("7") == 1


async def test_rerun_drops_a_partial_last_line(job: Callable[..., JobConfig]) -> None:
    config = job(3)
    await run_job(config, backends=[FunctionBackend(scripted(completion('{"label": "pos"}')))])
    data = config.output_path.read_bytes()
    config.output_path.write_bytes(data[: len(data) - 20])  # as if killed mid-write
    second = FunctionBackend(scripted(completion('{"label": "pos"}')))
    summary = await run_job(config, backends=[second])
    assert summary.rows.skipped == 2 and summary.rows.ok == 1
    rows = read_jsonl(config.output_path)
    assert sorted(r["id"] for r in rows) == [0, 1, 2]


async def test_rerun_with_other_settings_is_refused_unless_overwrite(
    job: Callable[..., JobConfig],
) -> None:
    config = job(2)
    await run_job(config, backends=[FunctionBackend(scripted(completion('{"label": "pos"}')))])
    changed = config.replace(system="be kind")
    with pytest.raises(ConfigError, match='--system: was unset, now "be kind"'):
        await run_job(changed, backends=[FunctionBackend(scripted(completion("{}")))])
    overwrite = changed.replace(overwrite=True)
    backend = FunctionBackend(scripted(completion('{"label": "neg"}')))
    summary = await run_job(overwrite, backends=[backend])
    assert summary.rows.model_dump() == {
        "total": 2,
        "ok": 2,
        "error": 0,
        "skipped": 0,
        "changed": 0,
        "not_in_input": 0,
        "pruned": 0,
    }
    assert all(r["output"] == {"label": "neg"} for r in read_jsonl(config.output_path))


async def test_without_a_schema_the_output_is_the_text(job: Callable[..., JobConfig]) -> None:
    config = job(1, schema_ref=None)
    backend = FunctionBackend(scripted(completion("just words", done_reason="length")))
    await run_job(config, backends=[backend])
    [row] = read_jsonl(config.output_path)
    assert row["status"] == "ok" and row["output"] == "just words"
    assert row["done_reason"] == "length"
    assert backend.requests[0].format is None


async def test_a_pydantic_schema_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mylabels.py").write_text(
        "from typing import Literal\nfrom pydantic import BaseModel, Field\n"
        "class Sentiment(BaseModel):\n"
        "    label: Literal['pos', 'neg']\n"
        "    score: float = Field(ge=0, le=1)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = JobConfig(
        input=write_rows(tmp_path / "in.jsonl", 1), model="m", schema_ref="mylabels:Sentiment"
    )
    backend = FunctionBackend(
        scripted(
            completion('{"label": "pos", "score": 3}'), completion('{"label": "pos", "score": 1}')
        )
    )
    await run_job(config, backends=[backend])
    [row] = read_jsonl(config.output_path)
    assert row["output"] == {"label": "pos", "score": 1.0}
    assert row["attempts"] == 2
    assert "score" in backend.requests[1].messages[-1]["content"]


async def test_duplicate_ids_fail_only_the_later_row(job: Callable[..., JobConfig]) -> None:
    config = job(2)
    with config.input.open("a") as f:
        f.write('{"id": 1, "prompt": "again"}\n')
    await run_job(config, backends=[FunctionBackend(scripted(completion('{"label": "pos"}')))])
    rows = {r["line"]: r for r in read_jsonl(config.output_path)}
    assert rows[2]["status"] == "ok"
    assert rows[3]["status"] == "error"
    assert "already used" in rows[3]["error"]["message"]


def test_the_sync_api_runs_the_same_pipeline(job: Callable[..., JobConfig]) -> None:
    from batch import run_job_sync

    config = job(2)
    summary = run_job_sync(
        config, backends=[FunctionBackend(scripted(completion('{"label": "pos"}')))]
    )
    assert summary.rows.model_dump() == {
        "total": 2,
        "ok": 2,
        "error": 0,
        "skipped": 0,
        "changed": 0,
        "not_in_input": 0,
        "pruned": 0,
    }
