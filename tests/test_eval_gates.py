"""`eval`'s gates and exit codes (0 every gate holds, 1 one fails, 2 usage or unreadable files),
and `--against`: agreement between two runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batch.cli import main
from tests.eval_rows import gold_rows, native_rows, write_jsonl


@pytest.fixture
def files(tmp_path: Path) -> list[str]:
    output = write_jsonl(tmp_path / "run.out.jsonl", native_rows())
    gold = write_jsonl(tmp_path / "gold.jsonl", gold_rows())
    return ["eval", str(output), "--gold", str(gold)]


# The fixture's figures: label accuracy 0.5, kappa 0.28, macro-F1 1/3; n 0.5; city 4/6.
@pytest.mark.parametrize(
    ("gates", "code"),
    [
        ([], 0),
        (["--min-accuracy", "0.5"], 0),
        (["--min-accuracy", "0.51"], 1),
        (["--min", "city=0.66"], 0),
        (["--min", "city=0.67"], 1),
        (["--min", "label.accuracy=0.5", "--min", "label.kappa=0.28"], 0),
        (["--min", "label.kappa=0.29"], 1),
        (["--min", "label.macro_f1=0.33"], 0),
        (["--min", "label.macro_f1=0.34"], 1),
        (["--min-accuracy", "0.5", "--min", "city=0.9"], 1),
    ],
)
def test_gates_decide_the_exit_code(files: list[str], gates: list[str], code: int) -> None:
    assert main([*files, *gates]) == code


def test_a_failed_gate_is_named_with_its_value(
    files: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "r.json"
    argv = [*files, "--min-accuracy", "0.6", "--min", "label.kappa=0.2", "--report", str(report)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "gate failed: label.accuracy = 0.5000, minimum 0.6: FAILED" in err
    assert "gate failed: n.accuracy = 0.5000, minimum 0.6: FAILED" in err
    assert "city.accuracy" not in err and "label.kappa" not in err
    gates = json.loads(report.read_text())["gates"]
    assert gates[0] == {
        "name": "label.accuracy",
        "field": "label",
        "metric": "accuracy",
        "min": 0.6,
        "value": 0.5,
        "passed": False,
    }
    assert [(g["name"], g["passed"]) for g in gates] == [
        ("label.accuracy", False),
        ("n.accuracy", False),
        ("city.accuracy", True),
        ("label.kappa", True),
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--min", "colour=0.5"], "no compared field 'colour'"),
        (["--min", "city.kappa=0.5"], "'city' is not categorical"),
        (["--min", "label=high"], "'high' is not a number"),
        (["--min", "label=1.5"], "not between 0 and 1"),
        (["--min", "label"], "expected NAME=X"),
        (["--min-accuracy", "80%"], "'80%' is not a number"),
        (["--field", "colour"], "--field colour: no reference row has that field"),
    ],
)
def test_usage_errors_exit_2(
    files: list[str], extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*files, *extra]) == 2
    assert message in capsys.readouterr().err


def test_unreadable_files_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gold = write_jsonl(tmp_path / "gold.jsonl", gold_rows())
    assert main(["eval", str(tmp_path / "nope.jsonl"), "--gold", str(gold)]) == 2
    assert "cannot read" in capsys.readouterr().err
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": 1, "status": "ok"}\n{"id": 2,\n')
    assert main(["eval", str(broken), "--gold", str(gold)]) == 2
    assert "broken.jsonl:2: not JSON" in capsys.readouterr().err
    assert main(["eval", str(gold), "--gold", str(gold)]) == 2  # an input is not an output
    assert "not an output row of batch" in capsys.readouterr().err


def test_gold_and_against_together_or_neither_is_a_usage_error(files: list[str]) -> None:
    for argv in ([*files, "--against", files[1]], files[:2]):
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        assert stopped.value.code == 2


def ok(key: str, label: str) -> dict[str, Any]:
    return {"id": key, "status": "ok", "output": {"label": label}}


def test_against_reports_agreement_kappa_and_the_rows_that_differ(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    failed = {"status": "error", "error": {"type": "timeout", "message": "slow"}}
    mine = [ok("a", "cat"), ok("b", "dog"), ok("c", "dog"), {"id": "d", **failed}, ok("e", "cat")]
    other = [ok("a", "cat"), ok("b", "cat"), ok("c", "dog"), ok("d", "cat"), {"id": "e", **failed}]
    mine_path = write_jsonl(tmp_path / "mine.jsonl", mine)
    other_path = write_jsonl(tmp_path / "other.jsonl", other)
    report_path = tmp_path / "r.json"
    argv = ["eval", str(mine_path), "--against", str(other_path), "--report", str(report_path)]
    assert main([*argv, "--min-accuracy", "0.5"]) == 0
    report = json.loads(report_path.read_text())
    assert report["reference"] == {"kind": "output", "path": str(other_path)}
    # e failed in the other run: left out, listed. d failed in mine: a disagreement.
    coverage = report["coverage"]
    assert (coverage["matched"], coverage["failed_ids"]) == (4, ["d"])
    assert coverage["reference_failed_ids"] == ["e"]
    label = report["fields"]["label"]
    assert (label["correct"], label["compared"], label["accuracy"]) == (2, 4, 0.5)
    # other: cat cat dog cat; mine: cat dog dog (failed). p_e = (3x1 + 1x2) / 16
    assert label["kappa"] == pytest.approx((8 / 16 - 5 / 16) / (1 - 5 / 16))
    assert [(m["id"], m["reference"], m["output"]) for m in label["mismatches"]] == [
        ("b", "cat", "dog"),
        ("d", "cat", "(failed)"),
    ]
    out = capsys.readouterr().out
    assert "label (string, categorical): 2/4 = 50.0% agreement" in out
    assert "failed in the reference run, left out: e" in out
    assert main([*argv, "--min", "label=0.6"]) == 1


def test_against_an_openai_batch_output_written_elsewhere(tmp_path: Path) -> None:
    def line(key: str, content: str | None) -> dict[str, Any]:
        body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
        ok = content is not None
        return {
            "id": f"batch_req_{key}",
            "custom_id": key,
            "response": {"status_code": 200, "body": body} if ok else None,
            "error": None if ok else {"code": "server_error", "message": "boom"},
        }

    other = [line("a", '{"label": "cat"}'), line("b", '{"label": "dog"}'), line("c", None)]
    mine = [ok("a", "cat"), ok("b", "cat"), ok("c", "cat")]
    other_path = write_jsonl(tmp_path / "openai.jsonl", other)
    mine_path = write_jsonl(tmp_path / "mine.jsonl", mine)
    report_path = tmp_path / "r.json"
    argv = ["eval", str(mine_path), "--against", str(other_path), "--report", str(report_path)]
    assert main(argv) == 0
    report = json.loads(report_path.read_text())
    assert report["coverage"]["reference_failed_ids"] == ["c"]
    assert report["fields"]["label"]["accuracy"] == 0.5
    text_line = line("a", "plain words")
    write_jsonl(other_path, [text_line])
    write_jsonl(mine_path, [{"id": "a", "status": "ok", "output": "Plain words "}])
    assert main(argv) == 0
    assert json.loads(report_path.read_text())["fields"]["output"]["accuracy"] == 1.0


def test_a_run_where_every_row_failed_scores_zero_on_the_fields_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gold = write_jsonl(tmp_path / "gold.jsonl", [{"id": i, "label": "cat"} for i in range(60)])
    failed = {"status": "error", "error": {"type": "timeout", "message": "slow"}}
    output = write_jsonl(tmp_path / "out.jsonl", [{"id": i, **failed} for i in range(60)])
    argv = ["eval", str(output), "--gold", str(gold)]
    assert main(argv) == 2  # nothing says which fields the run was asked for
    assert "name the fields to score with --field" in capsys.readouterr().err
    page = tmp_path / "r.html"
    assert main([*argv, "--field", "label", "--min-accuracy", "0.1", "--html", str(page)]) == 1
    assert "label (string, categorical): 0/60 = 0.0% accuracy" in capsys.readouterr().out
    assert "Failed: 0, 1, 2," in page.read_text()
    assert "57, 58, 59" not in page.read_text()
    assert "and 10 more (all in --report)" in page.read_text()
