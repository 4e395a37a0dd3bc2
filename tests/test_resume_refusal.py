"""A rerun under other settings is refused, and the refusal says which setting changed, its old
and new value, and the two ways on. (The backend's part: tests/test_embedded.py.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from batch.testing import FakeOllama
from tests.conftest import run_cli, write_rows

SCHEMA = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}


@pytest.fixture
def server() -> Iterator[FakeOllama]:
    with FakeOllama(models=["m", "other"], slots=4) as fake:
        yield fake


@pytest.fixture
def rows(tmp_path: Path) -> Path:
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    return write_rows(tmp_path / "in.jsonl", 3)


def refusal(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "None" not in err
    return err


def test_a_changed_option_is_named_with_its_old_and_new_value(
    server: FakeOllama, rows: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(rows, server.url, "--option", "temperature=0") == 0
    capsys.readouterr()
    assert run_cli(rows, server.url, "--option", "temperature=0.5", "--option", "seed=7") == 2
    err = refusal(capsys)
    assert "--option temperature: was 0, now 0.5" in err
    assert "--option seed: was unset, now 7" in err
    assert "--overwrite" in err and "--output" in err
    assert "--model" not in err  # only what changed


def test_a_changed_model_system_prompt_and_schema_are_named(
    server: FakeOllama, rows: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(rows, server.url, "--system", "Be brief.") == 0
    other_schema = rows.parent / "other.json"
    other_schema.write_text(json.dumps({**SCHEMA, "required": []}))
    capsys.readouterr()
    argv = ["--system", "Be kind.", "--schema", str(other_schema)]
    assert run_cli(rows, server.url, *argv, model="other") == 2
    err = refusal(capsys)
    assert "--model: was m, now other" in err
    assert '--system: was "Be brief.", now "Be kind."' in err
    assert "--schema: the schema differs" in err


def test_without_the_earlier_summary_the_lines_model_is_still_named(
    server: FakeOllama, rows: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(rows, server.url) == 0
    rows.with_name("in.out.summary.json").unlink()
    capsys.readouterr()
    assert run_cli(rows, server.url, model="other") == 2
    assert "--model: was m, now other" in refusal(capsys)


def test_without_any_record_the_refusal_lists_what_shapes_a_label(
    server: FakeOllama, rows: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(rows, server.url, "--system", "Be brief.") == 0
    rows.with_name("in.out.summary.json").unlink()
    capsys.readouterr()
    assert run_cli(rows, server.url) == 2
    err = refusal(capsys)
    assert "--model, --schema, --template, --system, --option, --think" in err
    assert "--overwrite" in err


def test_a_panel_over_an_output_of_one_model_is_named(
    server: FakeOllama, rows: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(rows, server.url) == 0
    capsys.readouterr()
    assert run_cli(rows, server.url, "--panel", "m,other") == 2
    assert "--panel: one model made them" in refusal(capsys)
