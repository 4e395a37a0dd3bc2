"""`python -m batch eval`: the flags, and the exit code (0 every gate holds, 1 a gate fails,
2 usage or unreadable files). Kept light: the evaluation is imported when the command runs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_GATE_FAILED, EXIT_USAGE = 0, 1, 2


def add_eval(commands: Any) -> None:
    parser = commands.add_parser(
        "eval",
        help="measure an output against hand labels (or another run) and gate on it",
        description="Compare a run's output with a gold file (or another run's output) row by "
        "row, matched by id: accuracy per field; for categorical fields Cohen's kappa, "
        "precision/recall/F1 per value, macro-F1 and the confusion matrix; for numbers exact "
        "match and MAE. Strings are compared trimmed and case-folded. Exit 0: every gate "
        "holds; 1: a gate fails; 2: usage or unreadable files.",
    )
    parser.add_argument(
        "output", type=Path, metavar="OUTPUT", help="the run's output JSONL (native or OpenAI)"
    )
    reference = parser.add_mutually_exclusive_group(required=True)
    reference.add_argument(
        "--gold", type=Path, help="JSONL of expected values: top-level fields or `expected`"
    )
    reference.add_argument(
        "--against",
        type=Path,
        metavar="OTHER_OUTPUT",
        help="another run's output on the same rows: agreement instead of accuracy",
    )
    parser.add_argument(
        "--field",
        dest="fields",
        action="append",
        metavar="NAME",
        help="compare this field (repeatable; dotted for nested; default: every field in both)",
    )
    parser.add_argument("--min-accuracy", metavar="X", help="gate: every field's accuracy >= X")
    parser.add_argument(
        "--min",
        dest="minimums",
        action="append",
        default=[],
        metavar="NAME=X",
        help="gate on one field: NAME=X (accuracy), NAME.kappa=X, NAME.macro_f1=X; repeatable",
    )
    parser.add_argument("--report", type=Path, metavar="FILE.json", help="write every figure")
    parser.add_argument("--html", type=Path, metavar="FILE.html", help="write a one-page report")


def run_eval(args: argparse.Namespace) -> int:
    from batch.quality.gates import Gate, GateSpecError, parse_min, parse_minimum
    from batch.quality.html import render_html
    from batch.quality.load import EvalInputError
    from batch.quality.report import evaluate
    from batch.quality.text import render_text

    try:
        gates = [parse_min(spec) for spec in args.minimums]
        reference = args.gold if args.gold is not None else args.against
        report = evaluate(args.output, reference, against=args.gold is None, fields=args.fields)
        if args.min_accuracy is not None:
            minimum = parse_minimum(args.min_accuracy, "--min-accuracy")
            gates = [Gate(name, "accuracy", minimum) for name in report.fields] + gates
        report.check_gates(gates)
        if args.report is not None:
            args.report.write_text(json.dumps(report.as_json(), indent=2) + "\n")
        if args.html is not None:
            args.html.write_text(render_html(report), encoding="utf-8")
    except (EvalInputError, GateSpecError, OSError) as exc:
        sys.stderr.write(f"batch eval: {exc}\n")
        return EXIT_USAGE
    for warning in report.warnings:
        sys.stderr.write(f"batch eval: warning: {warning}\n")
    sys.stdout.write(render_text(report) + "\n")
    for result in report.gates:
        if not result.passed:
            sys.stderr.write(f"batch eval: gate failed: {result.describe()}\n")
    if step_summary := os.environ.get("GITHUB_STEP_SUMMARY"):
        _append_step_summary(Path(step_summary), report)
    return EXIT_OK if report.passed else EXIT_GATE_FAILED


def _append_step_summary(page: Path, report: Any) -> None:
    """eval's gates and each field's figures, for a GitHub Actions job's summary page."""
    from batch.observe.step_summary import append_section, eval_section
    from batch.quality.report import field_json

    figures = {}
    for name, field in report.fields.items():
        shown = field_json(field)
        accuracy = shown["accuracy"]
        text = f"{shown['correct']}/{shown['compared']}"
        text += f" = {accuracy:.1%}" if accuracy is not None else ""
        if shown.get("kappa") is not None:
            text += f", kappa {shown['kappa']:.3f}"
        figures[name] = text
    title = f"{report.output} against {report.reference}"
    gates = [result.describe() for result in report.gates]
    append_section(page, eval_section(title, gates, figures, report.passed))
