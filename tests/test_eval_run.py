"""`eval` on what a real run wrote: the CLI against the fake Ollama server, OpenAI output format,
an input file that carries its own labels and so is its own gold file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batch.cli import main
from batch.testing import FakeOllama

SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": ["positive", "negative", "neutral"]}},
    "required": ["label"],
}
# text: (gold label, the fake model's answer; None: prose, which fails the row)
ROWS = {
    "good film": ("positive", "positive"),
    "bad film": ("negative", "positive"),
    "dull film": ("neutral", None),
    "fine film": ("neutral", "neutral"),
}


@pytest.fixture
def server() -> Iterator[FakeOllama]:
    with FakeOllama(models=["m"]) as fake:
        yield fake


def answer(body: dict[str, Any]) -> str:
    label = ROWS[body["messages"][-1]["content"]][1]
    return "I would say it is neutral." if label is None else json.dumps({"label": label})


def test_eval_reads_the_openai_output_of_a_run(server: FakeOllama, tmp_path: Path) -> None:
    rows = [{"id": i, "text": t, "label": gold} for i, (t, (gold, _)) in enumerate(ROWS.items())]
    job = tmp_path / "in.jsonl"
    job.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    server.responder = answer
    run = ["run", str(job), "--model", "m", "--host", server.url, "--template", "{text}", "-q"]
    run += ["--schema", str(tmp_path / "schema.json"), "--max-attempts", "1"]
    assert main([*run, "--output-format", "openai"]) == 1  # the prose row failed
    output = tmp_path / "in.out.jsonl"
    assert json.loads(output.read_text().splitlines()[0])["custom_id"] in {"0", "1", "2", "3"}

    report_path = tmp_path / "report.json"
    evaluate = ["eval", str(output), "--gold", str(job), "--report", str(report_path)]
    assert main([*evaluate, "--min-accuracy", "0.5"]) == 0
    report = json.loads(report_path.read_text())
    assert report["coverage"]["failed_ids"] == ["2"]
    label = report["fields"]["label"]
    assert list(report["fields"]) == ["label"]
    assert (label["compared"], label["correct"], label["failed"]) == (4, 2, 1)
    # reference neg 1, neu 2, pos 1; output pos 2, neu 1, failed 1: p_e = (0 + 2 + 2) / 16
    assert label["kappa"] == pytest.approx((8 / 16 - 4 / 16) / (1 - 4 / 16))
    assert label["confusion"]["counts"] == [[0, 0, 1, 0], [0, 1, 0, 1], [0, 0, 1, 0]]
    assert main([*evaluate, "--min", "label.kappa=0.34"]) == 1


def test_the_sample_is_its_own_gold_file_and_fits_its_schema() -> None:
    jobs = Path(__file__).parent.parent / "jobs"
    rows = [json.loads(line) for line in (jobs / "topics.jsonl").read_text().splitlines()]
    enum = json.loads((jobs / "topic.schema.json").read_text())["properties"]["topic"]["enum"]
    assert len({row["id"] for row in rows}) == len(rows) == 24
    assert sorted(row["topic"] for row in rows) == sorted(enum * 8)
