"""The CLI end to end: the real `ollama` client against the fake Ollama server on loopback."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batch.cli import main
from batch.testing import FakeOllama, Fault, count_tokens
from tests.conftest import free_port, output_by_id, run_cli, summary_of

SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": ["positive", "negative", "neutral"]}},
    "required": ["label"],
}


@pytest.fixture
def server() -> Iterator[FakeOllama]:
    with FakeOllama(models=["m"], slots=8) as fake:
        yield fake


@pytest.fixture
def job(tmp_path: Path) -> Callable[..., Path]:
    """Writes rows `row 0` .. `row n-1` (or the given lines) and a schema file."""
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))

    def make(n: int = 3, lines: list[str] | None = None) -> Path:
        path = tmp_path / "in.jsonl"
        rows = (
            lines
            if lines is not None
            else [json.dumps({"id": i, "prompt": f"row {i}"}) for i in range(n)]
        )
        path.write_text("".join(line + "\n" for line in rows))
        return path

    return make


@pytest.mark.usefixtures("http_stack")
def test_rows_are_labelled_validated_and_metered(
    server: FakeOllama, job: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = job(5)
    assert run_cli(path, server.url) == 0
    rows = output_by_id(path)
    assert sorted(rows) == [0, 1, 2, 3, 4]
    for i, row in rows.items():
        assert row["status"] == "ok"
        assert row["output"]["label"] in SCHEMA["properties"]["label"]["enum"]  # type: ignore[index]
        assert row["line"] == i + 1
        assert row["host"] == server.url
        assert row["usage"] == {
            "requests": 1,
            "input_tokens": count_tokens(f"row {i}"),
            "output_tokens": count_tokens(json.dumps(row["output"], separators=(",", ":"))),
        }
        assert row["durations_ns"]["total_duration"] > 0
    assert server.requests[0]["format"] == SCHEMA
    assert server.requests[0]["options"] == {"temperature": 0}
    assert summary_of(path)["rows"] == {
        "total": 5,
        "ok": 5,
        "error": 0,
        "skipped": 0,
        "changed": 0,
        "not_in_input": 0,
        "pruned": 0,
    }
    assert "5 ok, 0 failed" in capsys.readouterr().err


@pytest.mark.usefixtures("http_stack")
@pytest.mark.parametrize(
    ("kind", "cause"),
    [
        ("busy", "http_503"),
        ("crash", "http_500"),
        ("rate_limit", "http_429"),
        ("bad_gateway", "http_502"),
        ("gateway_timeout", "http_504"),
        ("drop", "disconnect"),
        ("bad_body", "bad_body"),
        ("prose", "validation"),
        ("fenced", "validation"),
        ("schema_violation", "validation"),
        ("truncate", "truncated"),
    ],
)
def test_each_fault_is_retried_to_success(
    server: FakeOllama, job: Callable[..., Path], kind: Any, cause: str
) -> None:
    path = job(1)
    server.add_fault(Fault(kind, times=2))
    assert run_cli(path, server.url) == 0
    [row] = output_by_id(path).values()
    assert row["status"] == "ok" and row["attempts"] == 3
    assert summary_of(path)["retries"] == {"total": 2, "by_cause": {cause: 2}}


@pytest.mark.usefixtures("http_stack")
def test_a_hung_server_times_out_and_is_retried(
    server: FakeOllama, job: Callable[..., Path]
) -> None:
    path = job(2)
    server.add_fault(Fault("hang", match="row 0", times=1))
    assert run_cli(path, server.url, "--timeout", "2") == 0
    rows = output_by_id(path)
    assert rows[0]["status"] == "ok" and rows[0]["attempts"] == 2
    assert summary_of(path)["retries"]["by_cause"] == {"timeout": 1}


def test_a_row_that_never_validates_fails_alone_with_its_raw_reply(
    server: FakeOllama, job: Callable[..., Path]
) -> None:
    path = job(3)

    def prose_for_row_2(body: dict[str, Any]) -> str:
        asked_row_2 = any("row 2" in m["content"] for m in body["messages"])
        return "I think it is positive." if asked_row_2 else '{"label": "neutral"}'

    server.responder = prose_for_row_2
    assert run_cli(path, server.url, "--max-attempts", "3") == 1
    rows = output_by_id(path)
    assert [rows[i]["status"] for i in range(3)] == ["ok", "ok", "error"]
    error = rows[2]["error"]
    assert error["type"] == "validation" and "not JSON" in error["message"]
    assert error["raw"]
    assert rows[2]["attempts"] == 3 and rows[2]["usage"]["requests"] == 3
    assert summary_of(path)["errors_by_type"] == {"validation": 1}


def test_missing_token_counts_count_as_zero(server: FakeOllama, job: Callable[..., Path]) -> None:
    path = job(1)
    server.add_fault(Fault("no_counts"))
    assert run_cli(path, server.url) == 0
    assert output_by_id(path)[0]["usage"] == {"requests": 1, "input_tokens": 0, "output_tokens": 0}


def test_an_unknown_model_stops_the_run_early(
    server: FakeOllama, job: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = job(100)
    code = main(["run", str(path), "--model", "nope", "--host", server.url, "-q", "-c", "2"])
    assert code == 2
    assert "model 'nope' is not available" in capsys.readouterr().err
    assert server.request_count < 10
    assert summary_of(path)["fatal"].startswith("model 'nope'")


@pytest.mark.usefixtures("http_stack")
def test_an_unreachable_host_stops_the_run_naming_it(
    job: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    host = f"http://127.0.0.1:{free_port()}"
    assert run_cli(job(3), host, "--max-attempts", "2") == 2
    err = capsys.readouterr().err
    assert f"cannot connect to {host} after 2 attempts" in err
    assert "Traceback" not in err


@pytest.mark.usefixtures("http_stack")
def test_concurrency_is_never_exceeded(job: Callable[..., Path]) -> None:
    with FakeOllama(models=["m"], slots=16, latency=0.02) as fake:
        path = job(40)
        assert run_cli(path, fake.url, "-c", "3") == 0
        assert fake.max_in_flight == 3


def test_bad_input_lines_each_get_one_error_row_and_the_rest_run(
    server: FakeOllama, job: Callable[..., Path]
) -> None:
    lines = [
        '{"id": "a", "prompt": "fine"}',
        "not json at all",
        "[1, 2, 3]",
        '{"id": "b"}',
        '{"id": "a", "prompt": "again"}',
        "",
        '{"id": "c", "messages": [{"role": "user", "content": "hi"}]}',
        '{"id": "d", "prompt": "ok", "options": "x"}',
    ]
    path = job(lines=lines)
    assert run_cli(path, server.url) == 1
    rows = [json.loads(x) for x in path.with_name("in.out.jsonl").read_text().splitlines()]
    by_line = {r["line"]: r for r in rows}
    assert sorted(by_line) == [1, 2, 3, 4, 5, 7, 8]
    assert {n for n, r in by_line.items() if r["status"] == "ok"} == {1, 7}
    for n in (2, 3, 4, 5, 8):
        assert by_line[n]["error"]["type"] == "bad_input"
        assert f"line {n}" in by_line[n]["error"]["message"]
    assert server.request_count == 2


def test_rerun_resumes_and_ends_with_one_line_per_row(
    server: FakeOllama, job: Callable[..., Path]
) -> None:
    path = job(6)
    server.add_fault(Fault("crash", match="row 4", times=None))
    assert run_cli(path, server.url, "--max-attempts", "2") == 1
    server.clear_faults()
    sent_before = server.request_count
    assert run_cli(path, server.url) == 0
    assert server.request_count == sent_before + 1
    rows = output_by_id(path)
    assert sorted(rows) == list(range(6)) and all(r["status"] == "ok" for r in rows.values())
    assert summary_of(path)["rows"] == {
        "total": 6,
        "ok": 1,
        "error": 0,
        "skipped": 5,
        "changed": 0,
        "not_in_input": 0,
        "pruned": 0,
    }


def test_rerun_with_another_model_is_refused(
    server: FakeOllama, job: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = job(2)
    assert run_cli(path, server.url) == 0
    assert run_cli(path, server.url, "--system", "other") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert run_cli(path, server.url, "--system", "other", "--overwrite") == 0


def test_usage_errors_exit_2_with_a_message(
    job: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = job(1)
    assert main(["run", str(tmp_path / "missing.jsonl"), "--model", "m"]) == 2
    assert "missing.jsonl does not exist" in capsys.readouterr().err
    assert main(["run", str(path), "--model", "m", "--schema", "nomodule:Nothing"]) == 2
    assert "cannot import 'nomodule'" in capsys.readouterr().err
    assert main(["run", str(path), "--host", "http://127.0.0.1:9", "-q"]) == 2
    assert "pass --model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["run", str(path), "--concurrency", "lots"])
    assert exited.value.code == 2


def test_the_sample_job_runs_against_ollama_when_the_environment_names_a_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = Path(__file__).parent.parent / "jobs"
    for name in ("in.jsonl", "in.toml", "order.schema.json"):
        (tmp_path / name).write_bytes((jobs / name).read_bytes())
    with FakeOllama(models=["gemma3:270m"]) as fake:
        monkeypatch.setenv("OLLAMA_HOST", fake.url)  # the environment wins over the job file
        assert main(["run", str(tmp_path / "in.jsonl"), "-q"]) == 0
        assert fake.requests[0]["options"] == {"temperature": 0, "num_predict": 128}
        assert "Order: Order 1042: 3 blue mugs" in fake.requests[0]["messages"][-1]["content"]
    rows = [json.loads(x) for x in (tmp_path / "in.out.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    assert all(set(r["output"]) == {"item", "quantity", "city"} for r in rows)
    assert "12 ok, 0 failed" in capsys.readouterr().err


def test_progress_is_logged_as_lines_when_stderr_is_not_a_terminal(
    job: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeOllama(models=["m"], slots=2, latency=0.02) as fake:
        path = job(30)
        schema = str(path.parent / "schema.json")
        argv = ["run", str(path), "-m", "m", "--host", fake.url, "--schema", schema, "-c", "2"]
        assert main([*argv, "--log-every", "0.05"]) == 0
    err = capsys.readouterr().err
    assert "progress: " in err and "rows/s" in err


def test_help_leaves_the_settings_and_pydantic_unimported() -> None:
    """`python -m batch --help` stays quick: the run's settings are imported by run and plan."""
    import subprocess
    import sys

    probe = (
        "import sys\nfrom batch.cli import main\ntry:\n    main(['--help'])\n"
        "except SystemExit:\n    pass\n"
        "print(sorted(m for m in ('pydantic', 'batch.run.settings') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"
