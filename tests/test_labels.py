"""Every run shows its labels: categorical fields found in the schema, their values counted over
the ok rows, and the warning for a field where one value takes nearly every row."""

from __future__ import annotations

import enum
import json
import logging
from pathlib import Path
from typing import Literal

import pydantic
import pytest

from batch import JobConfig, run_job
from batch.core.categories import categorical_fields
from batch.core.chat import ChatRequest, Completion
from batch.core.errors import Rejected
from batch.run.summary import human_summary
from batch.testing import FakeOllama, FunctionBackend, TestBackend, completion
from tests.conftest import run_cli, write_rows

SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"enum": ["pos", "neg"]},
        "urgent": {"type": "boolean"},
        "kind": {"const": "review"},
        "note": {"type": "string"},
        "meta": {
            "type": "object",
            "properties": {"lang": {"enum": ["en", "fr", "de"]}, "score": {"type": "number"}},
        },
    },
    "required": ["label", "urgent"],
}


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Address(pydantic.BaseModel):
    city: str
    country: Literal["fr", "de"]


class Order(pydantic.BaseModel):
    colour: Colour
    gift: bool
    size: Literal["s", "m"] | None = None
    channel: Literal["web"]
    address: Address
    tags: list[Literal["a", "b"]]
    quantity: int


def test_categorical_fields_of_a_json_schema() -> None:
    assert categorical_fields(SCHEMA) == {
        ("label",): ("pos", "neg"),
        ("urgent",): (True, False),
        ("kind",): ("review",),
        ("meta", "lang"): ("en", "fr", "de"),
    }


def test_categorical_fields_of_a_pydantic_model_follow_refs_and_optionals() -> None:
    fields = categorical_fields(Order.model_json_schema())
    assert fields == {
        ("colour",): ("red", "blue"),
        ("gift",): (True, False),
        ("size",): ("s", "m", None),
        ("channel",): ("web",),
        ("address", "country"): ("fr", "de"),
    }  # a list of labels and open strings and numbers are not categorical


def replies(*contents: str) -> FunctionBackend:
    """Answers row i (prompt "row i") with contents[i]."""

    def reply(request: ChatRequest) -> Completion | Exception:
        index = int(str(request.messages[-1]["content"]).split()[-1])
        if contents[index] == "fail":
            return Rejected("refused")
        return completion(contents[index])

    return FunctionBackend(reply)


def config_for(tmp_path: Path, rows: int) -> JobConfig:
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    return JobConfig(
        input=write_rows(tmp_path / "in.jsonl", rows),
        model="m",
        schema_ref=str(schema),
        backoff=0,
        max_attempts=1,
    )


def row(label: str, urgent: bool, lang: str | None = None) -> str:
    value: dict[str, object] = {"label": label, "urgent": urgent, "kind": "review", "note": "x"}
    if lang is not None:
        value["meta"] = {"lang": lang, "score": 1.5}
    return json.dumps(value)


async def test_the_summary_counts_each_value_over_ok_rows(tmp_path: Path) -> None:
    contents = [
        row("pos", True, "en"),
        row("pos", False, "fr"),
        row("neg", False),
        "fail",  # a failed row counts nowhere
        row("pos", False, "en"),
    ]
    config = config_for(tmp_path, len(contents))
    summary = await run_job(config, backends=[replies(*contents)])
    assert summary.labels == {
        "label": {"pos": 3, "neg": 1},
        "urgent": {"true": 1, "false": 3},
        "kind": {"review": 4},
        "meta.lang": {"en": 2, "fr": 1, "de": 0},  # every allowed value, 0 when never given
    }
    assert summary.warnings == []
    written = json.loads(config.summary_path.read_text())
    assert written["labels"] == summary.labels
    assert written["warnings"] == []
    printed = human_summary(summary, config.summary_path)
    assert "labels label (4 rows): pos 3, neg 1" in printed
    assert "labels meta.lang (3 rows): en 2, fr 1, de 0" in printed


async def test_one_value_on_95_percent_of_20_rows_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 19 of 20 rows say "pos" (95%); "urgent" is split; "kind" has no other value to give.
    contents = [row("pos", i % 2 == 0) for i in range(19)] + [row("neg", True)]
    config = config_for(tmp_path, len(contents))
    with caplog.at_level(logging.WARNING, logger="batch"):
        summary = await run_job(config, backends=[replies(*contents)])
    expected = (
        "label: 'pos' on 19 of 20 ok rows (95%), though 1 other value is allowed: "
        "the model may be answering without reading the input"
    )
    assert summary.warnings == [expected]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [expected]
    assert json.loads(config.summary_path.read_text())["warnings"] == [expected]


async def test_no_warning_below_20_rows_or_below_95_percent(tmp_path: Path) -> None:
    (tmp_path / "few").mkdir()
    few = config_for(tmp_path / "few", 19)
    summary = await run_job(few, backends=[replies(*[row("pos", True)] * 19)])
    assert summary.labels is not None and summary.labels["label"]["pos"] == 19
    assert summary.warnings == []

    (tmp_path / "mixed").mkdir()
    mixed = config_for(tmp_path / "mixed", 20)
    contents = [row("pos", i % 2 == 0) for i in range(18)] + [row("neg", True)] * 2  # 90%
    summary = await run_job(mixed, backends=[replies(*contents)])
    assert summary.warnings == []


async def test_a_run_without_categorical_fields_has_no_labels(tmp_path: Path) -> None:
    config = JobConfig(input=write_rows(tmp_path / "in.jsonl", 2), model="m")
    summary = await run_job(config, backends=[TestBackend()])
    assert summary.labels is None
    record = json.loads(config.summary_path.read_text())
    assert "labels" not in record and record["warnings"] == []


def test_after_a_resumed_run_the_labels_line_says_it_counts_that_runs_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "schema.json").write_text(json.dumps({**SCHEMA, "required": ["label"]}))
    path = write_rows(tmp_path / "in.jsonl", 3)
    with FakeOllama(models=["m"]) as server:
        assert run_cli(path, server.url) == 0
        write_rows(path, 5)
        capsys.readouterr()
        assert run_cli(path, server.url) == 0
    err = capsys.readouterr().err
    assert "labels label (this run's 2 rows; the 3 done before are not counted): " in err


async def test_a_reply_seen_before_is_judged_the_same_each_time(tmp_path: Path) -> None:
    """Valid reply texts are remembered (a label run sends back a few texts over and over);
    an invalid one never is."""
    good, bad = row("pos", True), row("maybe", True)
    contents = [good, bad, good, bad, good]
    config = config_for(tmp_path, len(contents))
    summary = await run_job(config, backends=[replies(*contents)])
    assert (summary.rows.ok, summary.rows.error) == (3, 2)
    written = [json.loads(line) for line in config.output_path.read_text().splitlines()]
    by_id = {r["id"]: r for r in written}
    assert [by_id[i]["status"] for i in range(5)] == ["ok", "error", "ok", "error", "ok"]
    assert by_id[3]["error"]["message"] == by_id[1]["error"]["message"]
    assert by_id[4]["output"] == by_id[0]["output"] == json.loads(good)
