"""Panels of models through the real CLI against the fake server, whose models answer a gold
file with known accuracies (batch/testing/graded.py): every row asked of every member, the
votes, the consensus, its agreement and usage as the server saw them."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from batch.cli import main
from batch.testing import FakeOllama
from batch.testing.graded import Graded
from tests.conftest import FAST_RETRIES, read_jsonl

SCHEMA = {
    "type": "object",
    "properties": {
        "topic": {"enum": ["sport", "weather", "food"]},
        "note": {"type": "string"},
    },
    "required": ["topic", "note"],
}
TOPICS = ("sport", "weather", "food")


def gold_rows(n: int) -> list[dict[str, Any]]:
    return [
        {"id": f"r{i}", "text": f"text number {i}", "topic": TOPICS[i % 3], "note": f"n{i}"}
        for i in range(n)
    ]


@pytest.fixture
def job(tmp_path: Path) -> Path:
    """12 rows that carry their gold labels, and the schema beside them."""
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in gold_rows(12)))
    return path


@pytest.fixture
def fake(job: Path) -> Any:
    with FakeOllama(models=("a", "b", "c", "d")) as server:
        server.responder = Graded.from_file(job, {"a": 1.0, "b": 0.75, "c": 0.5, "d": 0.25})
        yield server


def run(job: Path, fake: FakeOllama, *extra: str) -> int:
    argv = ["run", str(job), "--host", fake.url, "--schema", str(job.parent / "schema.json")]
    argv += ["--template", "{text}", "-q", *FAST_RETRIES, *extra]
    return main(argv)


def output(job: Path) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in read_jsonl(job.with_name("in.out.jsonl"))}


def summary(job: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(job.with_name("in.out.summary.json").read_text())
    return loaded


def asked(fake: FakeOllama) -> Counter[str]:
    return Counter(body["model"] for body in fake.requests)


def test_every_row_is_asked_of_every_member(job: Path, fake: FakeOllama) -> None:
    assert run(job, fake, "--panel", "a,b,c") == 0
    assert asked(fake) == {"a": 12, "b": 12, "c": 12}
    rows = output(job)
    for row in rows.values():
        assert [v["model"] for v in row["votes"]] == ["a", "b", "c"]
        assert all(v["status"] == "ok" and v["usage"]["requests"] == 1 for v in row["votes"])
        topics = [v["output"]["topic"] for v in row["votes"]]
        top, count = Counter(topics).most_common(1)[0]
        if count > 1:
            assert row["output"]["topic"] == top
        assert row["agreement"] == {"topic": round(topics.count(row["output"]["topic"]) / 3, 4)}
        assert row["usage"]["requests"] == 3
        assert row["model"] == "a,b,c"
        assert "sample" not in row["votes"][0]
    print(json.dumps(rows["r1"]))
    total = sum(r["usage"]["input_tokens"] + r["usage"]["output_tokens"] for r in rows.values())
    report = summary(job)
    assert report["usage"]["requests"] == len(fake.requests) == 36
    assert report["usage"]["input_tokens"] + report["usage"]["output_tokens"] == total
    print(json.dumps(report["panel"], indent=1))
