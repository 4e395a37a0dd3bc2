"""Confidence per label (--logprobs) and the rows sent for review (--review-below): through the
real `ollama` client against the fake server, which spells its replies in tokens (runs of word
characters, runs of the rest) with log-probability -len(token)/100 each."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from batch.labelling.confidence import field_confidence, value_spans
from batch.testing import FakeOllama
from tests.conftest import read_jsonl, run_cli, write_rows

SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"enum": ["pos", "negative"]},
        "urgent": {"type": "boolean"},
        "note": {"type": "string"},
    },
    "required": ["label", "urgent", "note"],
}


def by_length(token: str) -> float:
    return -len(token) / 100


def p(*tokens: str) -> float:
    """What the fake's tokens are worth: exp(sum of -len/100), rounded as batch writes it."""
    return rounded(math.exp(sum(by_length(t) for t in tokens)))


def rounded(probability: float) -> float:
    return float(f"{probability:.4g}")  # four significant digits, as batch writes them


# ---- the mapping, on hand-made tokens -------------------------------------------------------


def test_a_value_is_worth_the_tokens_that_spell_it() -> None:
    content = '{"label": "negative", "urgent": true, "n": {"x": "a"}}'
    tokens = [
        ('{"', -0.1),
        ("label", -0.2),
        ('": "', -0.3),
        ("neg", -0.5),
        ("ative", -0.25),
        ('", "', -0.01),
        ("urgent", -0.1),
        ('": ', -0.1),
        ("true", -0.4),
        (', "n": {"x": "', -0.2),
        ('a"}}', -0.7),  # straddles the value's end: it chose the value
    ]
    assert "".join(t for t, _ in tokens) == content
    confidence = field_confidence(content, tokens, [("label",), ("urgent",), ("n", "x"), ("no",)])
    assert confidence == {
        "label": rounded(math.exp(-0.75)),
        "urgent": rounded(math.exp(-0.4)),
        "n.x": rounded(math.exp(-0.7)),
    }


def test_spans_sit_inside_a_strings_quotes_and_cover_other_literals() -> None:
    content = ' {"a" : "x\\"y", "b":12.5,"c":{"d":null},"e":[1,2]} '
    spans = value_spans(content, [("a",), ("b",), ("c", "d"), ("e",)])
    assert {path: content[s:e] for path, (s, e) in spans.items()} == {
        ("a",): 'x\\"y',
        ("b",): "12.5",
        ("c", "d"): "null",
        ("e",): "[1,2]",
    }
    assert value_spans("not json", [("a",)]) == {}
    assert value_spans('{"a": "x"', [("a",)]) == {}  # cut short: nothing is mapped


def test_tokens_of_reasoning_before_the_reply_are_skipped() -> None:
    content = '{"a":"y"}'
    tokens = [("hmm, y", -3.0), ('{"', 0.0), ("a", 0.0), ('":"', 0.0), ("y", -0.1), ('"}', 0.0)]
    assert field_confidence(content, tokens, [("a",)]) == {"a": rounded(math.exp(-0.1))}


def test_tokens_that_do_not_spell_the_reply_give_no_confidence() -> None:
    assert field_confidence('{"a":"y"}', [('{"a":"z"}', -0.1)], [("a",)]) is None
    assert field_confidence('{"a":"y"}', [], [("a",)]) is None


def test_an_empty_string_is_worth_the_tokens_of_its_quotes() -> None:
    content = '{"a":""}'
    tokens = [('{"a":', -0.1), ('"', -0.2), ('"}', -0.3)]
    assert field_confidence(content, tokens, [("a",)]) == {"a": rounded(math.exp(-0.5))}


# ---- through the real client and the fake server ---------------------------------------------


@pytest.fixture
def job(tmp_path: Path) -> Path:
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    return write_rows(tmp_path / "in.jsonl", 12)


def labelled(fake: FakeOllama) -> None:
    """Row i says "pos" when i is even, "negative" when odd; urgent when i % 3 == 0."""

    def reply(body: dict[str, Any]) -> str:
        i = int(body["messages"][-1]["content"].split()[-1])
        label = "pos" if i % 2 == 0 else "negative"
        return json.dumps({"label": label, "urgent": i % 3 == 0, "note": "n"})

    fake.responder = reply


def test_logprobs_give_each_categorical_field_its_confidence(
    job: Path, fake_ollama: FakeOllama
) -> None:
    labelled(fake_ollama)
    assert run_cli(job, fake_ollama.url, "--logprobs", model="fake-model") == 0
    assert all(body.get("logprobs") is True for body in fake_ollama.requests)
    rows = {r["id"]: r for r in read_jsonl(job.with_name("in.out.jsonl"))}
    assert rows[0]["confidence"] == {"label": p("pos"), "urgent": p("true")}
    assert rows[1]["confidence"] == {"label": p("negative"), "urgent": p("false")}
    assert list(rows[0]).index("confidence") == list(rows[0]).index("output") + 1
    summary = json.loads(job.with_name("in.out.summary.json").read_text())
    assert summary["confidence"] == {"rows": 12, "without": 0}
    assert summary["warnings"] == []


def test_without_logprobs_the_request_does_not_ask_and_rows_have_no_confidence(
    job: Path, fake_ollama: FakeOllama
) -> None:
    assert run_cli(job, fake_ollama.url, model="fake-model") == 0
    assert all("logprobs" not in body for body in fake_ollama.requests)
    assert all("confidence" not in r for r in read_jsonl(job.with_name("in.out.jsonl")))


def test_a_server_without_logprobs_gives_one_warning_and_no_failure(
    job: Path, fake_ollama: FakeOllama, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_ollama.token_logprob = None  # as Ollama before 0.12.11: the field is ignored
    assert run_cli(job, fake_ollama.url, "--logprobs", model="fake-model") == 0
    rows = read_jsonl(job.with_name("in.out.jsonl"))
    assert len(rows) == 12 and all(r["status"] == "ok" and "confidence" not in r for r in rows)
    warned = [line for line in capsys.readouterr().err.splitlines() if "log-prob" in line]
    assert len(warned) == 1  # one warning, not one a row
    summary = json.loads(job.with_name("in.out.summary.json").read_text())
    assert len(summary["warnings"]) == 1
    message = summary["warnings"][0]
    assert warned[0].endswith(message)
    assert f"{fake_ollama.url} returned no token log-probabilities" in message
    assert "0.12.11" in message
    assert summary["confidence"] == {"rows": 0, "without": 12}


def test_rows_below_the_threshold_go_to_the_review_file(job: Path, fake_ollama: FakeOllama) -> None:
    labelled(fake_ollama)
    review = job.with_name("check.jsonl")
    below = 0.95  # "pos" is worth 0.9704, "negative" 0.9231: the odd rows are sent
    code = run_cli(
        job, fake_ollama.url, "--review-below", str(below), "--review-file", str(review),
        model="fake-model",
    )  # fmt: skip
    assert code == 0
    sent = read_jsonl(review)
    assert sorted(r["id"] for r in sent) == [1, 3, 5, 7, 9, 11]
    first = next(r for r in sent if r["id"] == 1)
    assert first == {
        "id": 1,
        "output": {"label": "negative", "urgent": False, "note": "n"},
        "confidence": {"label": p("negative"), "urgent": p("false")},
    }
    summary = json.loads(job.with_name("in.out.summary.json").read_text())
    assert summary["review"] == {"below": below, "rows": 6, "file": str(review)}

    # A rerun resumes: nothing new to label, nothing added; --overwrite starts it over.
    assert run_cli(job, fake_ollama.url, "--review-below", "0.95", "--review-file", str(review),
                   model="fake-model") == 0  # fmt: skip
    assert len(read_jsonl(review)) == 6
    assert run_cli(job, fake_ollama.url, "--review-below", "0.5", "--review-file", str(review),
                   "--overwrite", model="fake-model") == 0  # fmt: skip
    assert not review.exists()  # none below 0.5, so the file is not even created


def test_the_review_file_defaults_to_one_beside_the_output(
    job: Path, fake_ollama: FakeOllama
) -> None:
    labelled(fake_ollama)
    assert run_cli(job, fake_ollama.url, "--review-below", "0.95", model="fake-model") == 0
    assert len(read_jsonl(job.with_name("in.out.review.jsonl"))) == 6
