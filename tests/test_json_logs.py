"""`--log-format json` and the GitHub step summary, through the real CLI: every stderr line is
one JSON object with a time and an event, and CI's summary page gets a section."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from batch.cli import main
from batch.testing import FakeOllama, Fault
from tests.conftest import run_cli, write_rows

SCHEMA = {"type": "object", "properties": {"label": {"enum": ["a", "b"]}}, "required": ["label"]}


@pytest.fixture
def rows(tmp_path: Path) -> Path:
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    return write_rows(tmp_path / "in.jsonl", 6)


def json_lines(err: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in err.splitlines()]  # each line JSON, or this raises
    for line in lines:
        datetime.fromisoformat(line["time"])
        assert isinstance(line["event"], str)
    return lines


def fails_row_2(body: dict[str, Any]) -> str:
    return '{"label": "c"}' if "row 2" in body["messages"][0]["content"] else '{"label": "a"}'


def test_every_stderr_line_is_an_event_with_a_time(
    rows: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeOllama(models=["m"]) as server:
        server.responder = fails_row_2
        assert run_cli(rows, server.url, "--log-format", "json", "--max-attempts", "2") == 1
    lines = json_lines(capsys.readouterr().err)
    events = [line["event"] for line in lines]
    assert events[0] == "run_started" and events[-1] == "run_finished"
    [failed] = [line for line in lines if line["event"] == "row_failed"]
    assert (failed["id"], failed["cause"], failed["attempts"]) == (2, "validation", 2)
    finished = lines[-1]
    assert finished["exit_code"] == 1
    assert finished["rows"]["ok"] == 5 and finished["rows"]["error"] == 1
    assert finished["usage"]["requests"] == 7


def test_a_host_that_goes_down_and_comes_back_is_two_events(
    rows: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeOllama(models=["m"]) as server:
        server.add_fault(Fault("crash", times=3))
        argv = ["--log-format", "json", "--max-attempts", "6", "--concurrency", "1"]
        assert run_cli(rows, server.url, *argv, "--backoff", "0.01") == 0
    events = {line["event"]: line for line in json_lines(capsys.readouterr().err)}
    assert events["host_down"]["host"] == server.url
    assert events["host_up"]["host"] == server.url


def test_a_budget_stop_and_progress_are_events(
    rows: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeOllama(models=["m"], latency=0.05) as server:
        argv = ["run", str(rows), "--host", server.url, "-m", "m", "--log-format", "json"]
        argv += ["--max-requests", "3", "--log-every", "0.02", "--concurrency", "1"]
        assert main(argv) == 3
    lines = json_lines(capsys.readouterr().err)
    progress = [line for line in lines if line["event"] == "progress"]
    assert progress and all(line["total"] in (None, 6) for line in progress)
    assert progress[-1]["ok"] <= 3
    [stop] = [line for line in lines if line["event"] == "budget_stop"]
    assert stop["budget"] == "--max-requests 3"
    assert lines[-1]["event"] == "run_finished" and lines[-1]["exit_code"] == 3


def test_a_refused_setting_is_a_json_line_too(
    rows: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCH_LOG_FORMAT", "json")
    assert main(["run", str(rows), "-m", "m", "--deadline", "5"]) == 2
    [line] = json_lines(capsys.readouterr().err)
    assert line["event"] == "run_failed" and "--deadline" in line["message"]


def test_the_github_step_summary_gets_a_section(
    rows: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    page = tmp_path / "step-summary.md"
    page.write_text("# earlier steps\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(page))
    with FakeOllama(models=["m"]) as server:
        server.responder = fails_row_2
        assert run_cli(rows, server.url, "--max-attempts", "1") == 1
    text = page.read_text()
    assert text.startswith("# earlier steps\n")  # appended, never replaced
    assert f"### batch run: `{rows}`" in text
    assert "| 5 | 1 | 0 |" in text
    assert "Labels of `label`: a 5, b 0" in text
    assert "Failures: 1 validation" in text


def test_eval_appends_its_gates_and_figures_to_the_step_summary(
    rows: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with FakeOllama(models=["m"]) as server:
        server.responder = fails_row_2
        run_cli(rows, server.url, "--max-attempts", "1")
    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps({"id": i, "label": "a"}) + "\n" for i in range(6)))
    page = tmp_path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(page))
    output = rows.with_name("in.out.jsonl")
    assert main(["eval", str(output), "--gold", str(gold), "--min-accuracy", "0.9"]) == 1
    text = page.read_text()
    assert "### batch eval:" in text and "Gates: **failed**" in text
    assert "label.accuracy = 0.8333, minimum 0.9: FAILED" in text
    assert "| `label` | 5/6 = 83.3%, kappa 0.000 |" in text
