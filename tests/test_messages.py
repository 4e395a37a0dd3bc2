"""Messages a new user meets speak of the user's files and flags: no Python `None`, no advice
that does not apply, never advice to delete an input."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from batch.cli import main
from batch.testing import FakeOllama
from tests.conftest import run_cli, write_rows

OPENAI_LINE = {
    "custom_id": "r1",
    "method": "POST",
    "url": "/v1/chat/completions",
    "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
}


@pytest.fixture
def server() -> Iterator[FakeOllama]:
    with FakeOllama(models=["m"]) as fake:
        yield fake


def test_an_openai_file_naming_an_openai_model_is_told_to_pick_one_with_model(
    server: FakeOllama, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_text(json.dumps(OPENAI_LINE) + "\n")
    assert main(["run", str(path), "--host", server.url]) == 2
    err = capsys.readouterr().err
    assert "None" not in err
    assert "requests.jsonl with the model each row names" in err
    assert "OpenAI model names need --model to pick an Ollama model" in err
    assert "ollama pull gpt-4o-mini" not in err


def test_a_native_row_naming_a_missing_model_is_still_told_to_pull_it(
    server: FakeOllama, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"id": 1, "prompt": "hi", "model": "llama3.2"}) + "\n")
    assert main(["run", str(path), "--host", server.url, "-q"]) == 2
    assert "ollama pull llama3.2" in capsys.readouterr().err


def test_a_run_that_fails_before_its_first_row_leaves_no_output_to_resume(
    server: FakeOllama, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "schema.json").write_text(json.dumps({"type": "object"}))
    path = write_rows(tmp_path / "in.jsonl", 2)
    assert run_cli(path, server.url, model="missing") == 2
    assert not path.with_name("in.out.jsonl").exists()
    capsys.readouterr()
    assert main(["run", str(path), "--host", server.url, "-m", "m"]) == 0
    assert "resuming" not in capsys.readouterr().err


def test_an_empty_output_is_not_resumed(
    server: FakeOllama, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_rows(tmp_path / "in.jsonl", 2)
    path.with_name("in.out.jsonl").touch()
    assert main(["run", str(path), "--host", server.url, "-m", "m"]) == 0
    assert "resuming" not in capsys.readouterr().err


def test_cache_given_an_input_says_it_is_not_a_cache_and_never_to_delete_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_rows(tmp_path / "in.jsonl", 2)
    assert main(["cache", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path} is not a batch cache" in err
    assert "delete" not in err
    assert path.read_text().count("\n") == 2  # untouched


def test_cache_given_another_sqlite_database_never_advises_deleting_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (name TEXT)")
    db.close()
    assert main(["cache", str(path)]) == 2
    err = capsys.readouterr().err
    assert "not a batch cache" in err and "delete" not in err
