"""Row ids (issue 25): a repeated id names the line that used it first, and `eval` reads an id's
ok row; a row without an id is known by its line number, which never collides with an id a row
gives. Through the CLI against the fake Ollama server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batch.cli import main
from batch.testing import FakeOllama
from tests.conftest import read_jsonl


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    with FakeOllama(models=["m"]) as server:
        yield server


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def run(path: Path, fake: FakeOllama, *extra: str) -> int:
    return main(["run", str(path), "--model", "m", "--host", fake.url, "-q", *extra])


def test_a_repeated_id_names_the_line_that_used_it_first(tmp_path: Path, fake: FakeOllama) -> None:
    path = write(tmp_path / "in.jsonl", [{"id": i, "prompt": i} for i in ("a1", "b", "c", "a1")])
    assert run(path, fake) == 1
    [failed] = [r for r in read_jsonl(tmp_path / "in.out.jsonl") if r["status"] == "error"]
    assert failed["line"] == 4
    assert failed["error"]["message"].startswith("line 4: id 'a1' was already used by line 1;")
    # Resumed, a1 is done (read at a glance): a repeat still names the line that used it.
    with path.open("a") as more:
        more.write(json.dumps({"id": "b", "prompt": "b again"}) + "\n")
    assert run(path, fake) == 1
    messages = {
        r["line"]: r["error"]["message"]
        for r in read_jsonl(tmp_path / "in.out.jsonl")
        if r["status"] == "error"
    }
    assert messages[5].startswith("line 5: id 'b' was already used by line 2;")
    assert messages[4].startswith("line 4: id 'a1' was already used by line 1;")


@pytest.mark.parametrize("ok_first", [True, False])
def test_eval_reads_the_ok_row_of_a_repeated_id_and_warns(
    tmp_path: Path, fake: FakeOllama, capsys: pytest.CaptureFixture[str], ok_first: bool
) -> None:
    path = write(tmp_path / "in.jsonl", [{"id": i, "prompt": i} for i in ("a1", "b", "a1")])
    gold = write(
        tmp_path / "gold.jsonl",
        [{"id": i, "output": f"Fake answer to: {i}"} for i in ("a1", "b")],
    )
    assert run(path, fake, "--ordered") == 1
    out = tmp_path / "in.out.jsonl"
    lines = out.read_text().splitlines(keepends=True)
    assert [json.loads(line)["status"] for line in lines] == ["ok", "ok", "error"]
    if not ok_first:
        out.write_text("".join(reversed(lines)))
    capsys.readouterr()
    report = tmp_path / "report.json"
    assert main(["eval", str(out), "--gold", str(gold), "--report", str(report)]) == 0
    figures = json.loads(report.read_text())
    assert figures["coverage"]["failed_ids"] == []
    assert figures["fields"]["output"]["correct"] == 2
    warning = capsys.readouterr().err
    assert "id 'a1' is on 2 lines" in warning and "its ok line is read" in warning


def test_a_gold_file_that_repeats_an_id_names_both_lines(
    tmp_path: Path, fake: FakeOllama, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "in.jsonl", [{"id": i, "prompt": i} for i in ("a1", "b")])
    assert run(path, fake) == 0
    gold = write(tmp_path / "gold.jsonl", [{"id": i, "output": i} for i in ("a1", "b", "a1")])
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "in.out.jsonl"), "--gold", str(gold)]) == 2
    assert "id 'a1' is on lines 1 and 3 of the gold file" in capsys.readouterr().err


# Rows that give no id (lines 2, 4, 5) beside rows whose ids equal those line numbers.
MIXED: list[dict[str, Any]] = [
    {"id": 2, "prompt": "given 2", "label": "a"},
    {"prompt": "line 2", "label": "b"},
    {"id": 4, "prompt": "given 4", "label": "c"},
    {"prompt": "line 4", "label": "d"},
    {"prompt": "line 5", "label": "e"},
    {"id": 5, "prompt": "given 5", "label": "f"},
]


def test_a_row_without_an_id_never_collides_with_an_id_a_row_gives(
    tmp_path: Path, fake: FakeOllama
) -> None:
    path = write(tmp_path / "in.jsonl", MIXED)
    assert run(path, fake) == 0
    records = sorted(read_jsonl(tmp_path / "in.out.jsonl"), key=lambda r: r["line"])
    assert [r["status"] for r in records] == ["ok"] * 6
    # A row without an id is known by its line number, and says so.
    assert [(r["id"], r.get("id_from_line", False)) for r in records] == [
        (2, False), (2, True), (4, False), (4, True), (5, True), (5, False)
    ]  # fmt: skip
    assert run(path, fake) == 0  # resumed: every row done, none a repeat
    assert fake.request_count == 6
    assert len(read_jsonl(tmp_path / "in.out.jsonl")) == 6


def test_eval_keeps_rows_without_an_id_apart_from_ids_rows_give(
    tmp_path: Path, fake: FakeOllama
) -> None:
    path = write(tmp_path / "in.jsonl", MIXED)
    fake.responder = lambda body: json.dumps(  # each row's own label
        {"label": next(r["label"] for r in MIXED if r["prompt"] == body["messages"][-1]["content"])}
    )
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"label": {"type": "string"}}}))
    assert run(path, fake, "--schema", str(schema)) == 0
    report = tmp_path / "report.json"
    evaluate = ["eval", str(tmp_path / "in.out.jsonl"), "--gold", str(path), "--field", "label"]
    assert main([*evaluate, "--report", str(report), "--min-accuracy", "1"]) == 0
    figures = json.loads(report.read_text())
    assert figures["fields"]["label"]["compared"] == 6


def test_an_output_written_before_ids_and_lines_were_kept_apart_resumes(
    tmp_path: Path, fake: FakeOllama
) -> None:
    rows = [{"prompt": f"row {n}", "output": f"Fake answer to: row {n}"} for n in range(5)]
    path = write(tmp_path / "in.jsonl", rows)  # its own gold file
    assert run(path, fake) == 0
    out = tmp_path / "in.out.jsonl"
    old = out.read_text().replace(',"id_from_line":true', "")  # as batch wrote it before
    assert old != out.read_text()
    out.write_text(old)
    report = tmp_path / "report.json"
    evaluate = ["eval", str(out), "--gold", str(path), "--report", str(report)]
    assert main([*evaluate, "--min-accuracy", "1"]) == 0
    assert json.loads(report.read_text())["coverage"]["missing"] == 0
    assert run(path, fake) == 0
    assert fake.request_count == 5  # nothing labelled again
    assert out.read_text() == old


def test_the_review_file_keeps_a_row_without_an_id_apart(tmp_path: Path, fake: FakeOllama) -> None:
    path = write(tmp_path / "in.jsonl", [{"id": 2, "prompt": "given"}, {"prompt": "line 2"}])
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"label": {"enum": ["a", "b"]}}}))
    review = tmp_path / "review.jsonl"
    flags = ["--schema", str(schema), "--review-below", "1", "--review-file", str(review)]
    assert run(path, fake, *flags) == 0
    sent = sorted((r["id"], r.get("id_from_line", False)) for r in read_jsonl(review))
    assert sent == [(2, False), (2, True)]
