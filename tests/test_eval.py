"""`python -m batch eval`: every figure of the report against values worked out by hand on the
fixture of tests/eval_rows.py (a value never predicted, a value never in the gold, a gold id with
no output row, a failed row, an output row with no gold), in both output formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batch.cli import main
from batch.quality.fields import evaluate_field
from batch.quality.load import OutputRow, ReferenceRow
from tests.eval_rows import gold_rows, native_rows, openai_line, write_jsonl

FIELD_KEYS = {
    "kind", "categorical", "compared", "correct", "failed", "missing_value", "accuracy",
    "kappa", "macro_f1", "per_value", "confusion", "distribution", "mae", "mae_rows",
    "mismatches", "confused_pairs", "confidence_bands",
}  # fmt: skip


def evaluate(tmp_path: Path, output_rows: list[dict[str, Any]], *flags: str) -> dict[str, Any]:
    output = write_jsonl(tmp_path / "run.out.jsonl", output_rows)
    gold = write_jsonl(tmp_path / "gold.jsonl", gold_rows())
    report = tmp_path / "report.json"
    assert main(["eval", str(output), "--gold", str(gold), "--report", str(report), *flags]) == 0
    loaded: dict[str, Any] = json.loads(report.read_text())
    return loaded


@pytest.fixture(params=["native", "openai"])
def report(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    rows = native_rows()
    if request.param == "openai":
        rows = [openai_line(row) for row in rows]
    return evaluate(tmp_path, rows)


def test_report_keys_are_the_documented_ones(report: dict[str, Any]) -> None:
    assert set(report) == {
        "version", "output", "reference", "string_comparison", "coverage", "fields", "gates",
        "passed",
    }  # fmt: skip
    assert report["version"] == 1
    assert report["reference"]["kind"] == "gold"
    assert report["string_comparison"] == "trimmed, case-folded"
    assert list(report["fields"]) == ["label", "n", "city"]  # gold's `text` is not in the output
    for field in report["fields"].values():
        assert set(field) == FIELD_KEYS
    assert report["gates"] == [] and report["passed"] is True


def test_coverage_counts_and_lists_failed_missing_and_extra_rows(report: dict[str, Any]) -> None:
    assert report["coverage"] == {
        "reference_rows": 7,
        "output_rows": 7,
        "matched": 6,
        "ok": 5,
        "failed": 1,
        "failed_ids": ["r6"],
        "missing": 1,
        "missing_ids": ["r7"],
        "extra": 1,
        "extra_ids": ["r8"],
        "reference_failed": 0,
        "reference_failed_ids": [],
    }


def test_categorical_field_figures(report: dict[str, Any]) -> None:
    # reference (r1..r6): cat cat dog dog bird cat; output: cat cat dog cat fish (failed)
    label = report["fields"]["label"]
    assert (label["kind"], label["categorical"]) == ("string", True)
    assert (label["compared"], label["correct"], label["failed"]) == (6, 3, 1)
    assert label["accuracy"] == 0.5
    # p_o = 3/6; p_e = (cat 3x3 + dog 2x1 + bird 1x0) / 36 = 11/36; (18 - 11) / (36 - 11)
    assert label["kappa"] == pytest.approx(7 / 25)
    assert label["per_value"] == {
        "bird": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1, "predicted": 0},
        "cat": {
            "precision": pytest.approx(2 / 3),
            "recall": pytest.approx(2 / 3),
            "f1": pytest.approx(2 / 3),
            "support": 3,
            "predicted": 3,
        },
        "dog": {
            "precision": 1.0,
            "recall": 0.5,
            "f1": pytest.approx(2 / 3),
            "support": 2,
            "predicted": 1,
        },
        "fish": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "predicted": 1},
    }
    assert label["macro_f1"] == pytest.approx((0 + 2 / 3 + 2 / 3 + 0) / 4)
    assert label["confusion"] == {
        "reference": ["bird", "cat", "dog", "fish"],
        "output": ["bird", "cat", "dog", "fish", "(failed)"],
        "counts": [
            [0, 0, 0, 1, 0],
            [0, 2, 0, 0, 1],
            [0, 1, 1, 0, 0],
            [0, 0, 0, 0, 0],
        ],
    }
    assert label["distribution"] == {
        "reference": {"bird": 1, "cat": 3, "dog": 2, "fish": 0},
        "output": {"bird": 0, "cat": 3, "dog": 1, "fish": 1, "(failed)": 1},
    }
    assert (label["mae"], label["mae_rows"]) == (None, None)


def test_wrong_rows_and_worst_confused_pairs_with_examples(report: dict[str, Any]) -> None:
    label = report["fields"]["label"]
    assert label["mismatches"] == [
        {"id": "r4", "reference": "dog", "output": "cat", "context": "a text about r4"},
        {"id": "r5", "reference": "bird", "output": "fish", "context": "a text about r5"},
        {"id": "r6", "reference": "cat", "output": "(failed)", "context": "a text about r6"},
    ]
    assert [(p["reference"], p["output"], p["count"]) for p in label["confused_pairs"]] == [
        ("bird", "fish", 1),
        ("cat", "(failed)", 1),
        ("dog", "cat", 1),
    ]
    assert label["confused_pairs"][0]["examples"] == [{"id": "r5", "context": "a text about r5"}]


def test_number_field_exact_match_and_mean_absolute_error(report: dict[str, Any]) -> None:
    # reference 3 5 2 4 1 2; output 3 6 2 4 7 (failed): 7 distinct values over 6 rows
    n = report["fields"]["n"]
    assert (n["kind"], n["categorical"]) == ("number", False)
    assert (n["compared"], n["correct"], n["accuracy"]) == (6, 3, 0.5)
    assert n["mae"] == pytest.approx((0 + 1 + 0 + 0 + 6) / 5)
    assert n["mae_rows"] == 5  # the failed row has no number
    assert n["kappa"] is n["per_value"] is n["confusion"] is None


def test_string_field_matches_trimmed_and_case_folded(report: dict[str, Any]) -> None:
    # Paris/paris, Rome/" Rome", Oslo/OSLO, Kyiv/Kyiv match; Lima/Lyon and the failed row not
    city = report["fields"]["city"]
    assert (city["kind"], city["categorical"]) == ("string", False)
    assert (city["compared"], city["correct"]) == (6, 4)
    assert city["accuracy"] == pytest.approx(4 / 6)
    assert [m["id"] for m in city["mismatches"]] == ["r4", "r6"]


def test_accuracy_by_confidence_band(report: dict[str, Any]) -> None:
    # label confidence: r1 0.97 right, r2 0.85 right, r3 0.9 right, r4 0.55 wrong, r5 0.3 wrong
    bands = report["fields"]["label"]["confidence_bands"]
    assert [(b["from"], b["to"], b["rows"], b["correct"], b["accuracy"]) for b in bands] == [
        (0.0, 0.5, 1, 0, 0.0),
        (0.5, 0.7, 1, 0, 0.0),
        (0.7, 0.8, 0, 0, None),
        (0.8, 0.9, 1, 1, 1.0),
        (0.9, 0.95, 1, 1, 1.0),
        (0.95, 1.0, 1, 1, 1.0),
    ]
    assert report["fields"]["n"]["confidence_bands"] is None  # no row gives it for `n`


def test_printed_report_names_the_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    evaluate(tmp_path, native_rows())
    out = capsys.readouterr().out
    assert "strings are compared trimmed, case-folded" in out
    assert "label (string, categorical): 3/6 = 50.0% accuracy, kappa 0.280, macro-F1 0.333" in out
    assert "n (number): 3/6 = 50.0% accuracy, exact match 50.0%, MAE 1.400" in out
    assert "city (string): 4/6 = 66.7% accuracy" in out
    assert "failed: r6" in out and "no output row: r7" in out
    assert "1 output rows with no reference, left out" in out


def test_field_flag_limits_the_comparison(tmp_path: Path) -> None:
    report = evaluate(tmp_path, native_rows(), "--field", "city", "--field", "n")
    assert list(report["fields"]) == ["city", "n"]


def test_expected_object_nested_fields_and_ids_as_text(tmp_path: Path) -> None:
    # Gold ids are integers and its values under `expected`; the OpenAI lines' custom_id is a
    # string; nested objects compare by dotted path.
    gold = [
        {"id": 1, "expected": {"kind": "a", "place": {"city": "Oslo"}}},
        {"id": 2, "expected": {"kind": "b", "place": {"city": "Rome"}}},
    ]
    outputs = [
        {"id": 1, "status": "ok", "output": {"kind": "a", "place": {"city": "oslo"}}},
        {"id": 2, "status": "ok", "output": {"kind": "a", "place": {"city": "Pisa"}}},
    ]
    output = write_jsonl(tmp_path / "out.jsonl", [openai_line(row) for row in outputs])
    write_jsonl(tmp_path / "gold.jsonl", gold)
    report_path = tmp_path / "r.json"
    argv = ["eval", str(output), "--gold", str(tmp_path / "gold.jsonl"), "--report"]
    assert main([*argv, str(report_path)]) == 0
    fields = json.loads(report_path.read_text())["fields"]
    assert list(fields) == ["kind", "place.city"]
    assert fields["kind"]["accuracy"] == 0.5
    assert fields["place.city"]["accuracy"] == 0.5


def test_text_outputs_compare_with_the_gold_output(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "gold.jsonl", [{"id": "a", "output": "Yes"}, {"id": "b", "output": "no"}]
    )
    outputs = [
        {"id": "a", "status": "ok", "output": " yes\n"},
        {"id": "b", "status": "ok", "output": "maybe"},
    ]
    output = write_jsonl(tmp_path / "out.jsonl", outputs)
    report_path = tmp_path / "r.json"
    argv = ["eval", str(output), "--gold", str(tmp_path / "gold.jsonl"), "--report"]
    assert main([*argv, str(report_path)]) == 0
    fields = json.loads(report_path.read_text())["fields"]
    assert list(fields) == ["output"]
    assert (fields["output"]["correct"], fields["output"]["compared"]) == (1, 2)


def test_booleans_are_categorical_and_never_equal_to_numbers(tmp_path: Path) -> None:
    gold = [{"id": i, "spam": flag} for i, flag in enumerate([True, False, True, False])]
    answers = [True, True, 1, False]
    outputs = [{"id": i, "status": "ok", "output": {"spam": a}} for i, a in enumerate(answers)]
    write_jsonl(tmp_path / "gold.jsonl", gold)
    output = write_jsonl(tmp_path / "out.jsonl", outputs)
    report_path = tmp_path / "r.json"
    argv = ["eval", str(output), "--gold", str(tmp_path / "gold.jsonl"), "--report"]
    assert main([*argv, str(report_path)]) == 0
    spam = json.loads(report_path.read_text())["fields"]["spam"]
    assert (spam["kind"], spam["categorical"], spam["correct"]) == ("mixed", False, 2)
    outputs[2]["output"] = {"spam": True}
    write_jsonl(tmp_path / "out.jsonl", outputs)
    assert main([*argv, str(report_path)]) == 0
    spam = json.loads(report_path.read_text())["fields"]["spam"]
    assert (spam["kind"], spam["categorical"], spam["correct"]) == ("bool", True, 3)
    assert spam["confusion"]["reference"] == ["false", "true"]


def pairs(gold: list[Any], answers: list[Any]) -> list[tuple[ReferenceRow, OutputRow]]:
    return [
        (ReferenceRow(str(i), {"f": g}, None), OutputRow(str(i), True, {"f": a}, {}))
        for i, (g, a) in enumerate(zip(gold, answers, strict=True))
    ]


def test_which_fields_count_as_categorical() -> None:
    # Few distinct strings or integers over reference and output together: categorical.
    assert evaluate_field("f", pairs(["a", "b", "a"], ["a", "a", "b"])).categorical
    assert evaluate_field("f", pairs([1, 2, 1, 2], [1, 1, 2, 3])).categorical
    # More distinct values than rows compared (free text), or more than 20, or floats: not.
    assert not evaluate_field("f", pairs(["a", "b"], ["c", "b"])).categorical
    assert not evaluate_field("f", pairs([i % 21 for i in range(42)], [0] * 42)).categorical
    assert evaluate_field("f", pairs([i % 20 for i in range(40)], [0] * 40)).categorical
    assert not evaluate_field("f", pairs([0.5, 0.5, 1.0], [0.5, 1.0, 1.0])).categorical


def test_kappa_is_undefined_when_both_sides_use_one_value(tmp_path: Path) -> None:
    report = evaluate_field("f", pairs(["a", "a", "a"], ["a", "a", "a"]))
    assert (report.accuracy, report.kappa, report.macro_f1) == (1.0, None, 1.0)
    write_jsonl(tmp_path / "gold.jsonl", [{"id": i, "f": "a"} for i in range(3)])
    outputs = [{"id": i, "status": "ok", "output": {"f": "a"}} for i in range(3)]
    output = write_jsonl(tmp_path / "out.jsonl", outputs)
    argv = ["eval", str(output), "--gold", str(tmp_path / "gold.jsonl"), "--min", "f.kappa=0"]
    assert main(argv) == 1  # an undefined figure never holds a gate
