"""`eval`'s report: coverage, each compared field's figures and the gates, as one value, and its
JSON form (`--report`). The JSON keys are stable; every key is always present, null where a
figure does not apply to the field or is undefined.

    {"version": 1,
     "output": "run.out.jsonl",
     "reference": {"kind": "gold" | "output", "path": "gold.jsonl"},
     "string_comparison": "trimmed, case-folded",
     "coverage": {"reference_rows", "output_rows", "matched", "ok",
                  "failed", "failed_ids",            # matched rows that failed: wrong answers
                  "missing", "missing_ids",          # reference ids with no output row
                  "extra", "extra_ids",              # output ids with no reference row: left out
                  "reference_failed", "reference_failed_ids"},  # --against: failed in OTHER
     "fields": {NAME: {"kind": "string" | "number" | "bool" | "mixed", "categorical",
                       "compared", "correct", "failed", "missing_value", "accuracy",
                       "kappa", "macro_f1",
                       "per_value": {VALUE: {"precision", "recall", "f1", "support", "predicted"}},
                       "confusion": {"reference": [VALUE], "output": [VALUE], "counts": [[n]]},
                       "distribution": {"reference": {VALUE: n}, "output": {VALUE: n}},
                       "mae", "mae_rows",
                       "mismatches": [{"id", "reference", "output", "context"}],
                       "confused_pairs": [{"reference", "output", "count",
                                           "examples": [{"id", "context"}]}],
                       "confidence_bands": [{"from", "to", "rows", "correct", "accuracy"}]}},
     "gates": [{"name", "field", "metric", "min", "value", "passed"}],
     "passed": true}

With `--against`, the other run is the reference: `accuracy` is the percent agreement (0-1).

A panel's output (its lines carry `votes`, docs/panels.md) adds `agreement_bands` to each field
(accuracy by the row's agreement on it, as `confidence_bands`; null for a field that is not
categorical), and two keys:

     "members": {MODEL: {"fields": {NAME: {...as in "fields"...}},
                         "tokens", "correct_labels", "tokens_per_correct_label"}},
     "panel": {"kappa": {NAME: Fleiss' kappa over the votes},
               "tokens", "correct_labels", "tokens_per_correct_label"}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batch.quality.fields import FieldReport, evaluate_field
from batch.quality.gates import Gate, GateResult, check
from batch.quality.load import (
    EvalInputError,
    Matched,
    load_against,
    load_gold,
    load_outputs,
    match,
)
from batch.quality.members import PanelReport, evaluate_members

VERSION = 1
STRING_COMPARISON = "trimmed, case-folded"


@dataclass(slots=True)
class Report:
    output: Path
    reference: Path
    reference_kind: str  # gold, output
    output_rows: int
    reference_rows: int
    matched: Matched
    fields: dict[str, FieldReport]
    gates: list[GateResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # about the files read, for stderr
    panel: PanelReport | None = None

    @property
    def failed_ids(self) -> list[str]:
        return [out.id for _, out in self.matched.pairs if not out.ok]

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.gates)

    def check_gates(self, gates: list[Gate]) -> None:
        figures = {name: field_json(report) for name, report in self.fields.items()}
        self.gates = check(gates, figures)

    def as_json(self) -> dict[str, Any]:
        matched = self.matched
        failed = self.failed_ids
        panel = self.panel is not None
        return {
            "version": VERSION,
            "output": str(self.output),
            "reference": {"kind": self.reference_kind, "path": str(self.reference)},
            "string_comparison": STRING_COMPARISON,
            "coverage": {
                "reference_rows": self.reference_rows,
                "output_rows": self.output_rows,
                "matched": len(matched.pairs),
                "ok": len(matched.pairs) - len(failed),
                "failed": len(failed),
                "failed_ids": failed,
                "missing": len(matched.missing),
                "missing_ids": matched.missing,
                "extra": len(matched.extra),
                "extra_ids": matched.extra,
                "reference_failed": len(matched.reference_failed),
                "reference_failed_ids": matched.reference_failed,
            },
            "fields": {name: field_json(report, panel) for name, report in self.fields.items()},
            **self._panel_json(),
            "gates": [result.as_json() for result in self.gates],
            "passed": self.passed,
        }

    def _panel_json(self) -> dict[str, Any]:
        if self.panel is None:
            return {}
        return {
            "members": {
                member: {
                    "fields": {name: field_json(r, True) for name, r in fields.items()},
                    **spent.as_json(),
                }
                for member, (fields, spent) in self.panel.members.items()
            },
            "panel": {"kappa": self.panel.kappa, **self.panel.spent.as_json()},
        }


def field_json(report: FieldReport, panel: bool = False) -> dict[str, Any]:
    names, columns, counts = report.confusion or (None, None, None)
    reference_counts, output_counts = report.distribution or (None, None)
    return {
        "kind": report.kind,
        "categorical": report.categorical,
        "compared": report.compared,
        "correct": report.correct,
        "failed": report.failed,
        "missing_value": report.missing_value,
        "accuracy": report.accuracy,
        "kappa": report.kappa,
        "macro_f1": report.macro_f1,
        "per_value": None
        if report.per_value is None
        else {
            value: {
                "precision": row.precision,
                "recall": row.recall,
                "f1": row.f1,
                "support": row.support,
                "predicted": row.predicted,
            }
            for value, row in report.per_value.items()
        },
        "confusion": None
        if names is None
        else {"reference": names, "output": columns, "counts": counts},
        "distribution": None
        if reference_counts is None
        else {"reference": reference_counts, "output": output_counts},
        "mae": report.mae,
        "mae_rows": report.mae_rows if report.kind == "number" else None,
        "mismatches": [
            {"id": m.id, "reference": m.reference, "output": m.output, "context": m.context}
            for m in report.mismatches
        ],
        "confused_pairs": report.confused_pairs(),
        "confidence_bands": report.confidence_bands,
    } | ({"agreement_bands": report.agreement_bands} if panel else {})


def evaluate(
    output: Path, reference: Path, *, against: bool = False, fields: list[str] | None = None
) -> Report:
    """Raises EvalInputError for unreadable files and for nothing to compare."""
    loaded = load_outputs(output)
    outputs, warnings = loaded.rows, loaded.warnings
    if against:
        references, reference_failed, more = load_against(reference)
        warnings = warnings + more
    else:
        references, reference_failed = load_gold(reference), []
    matched = match(references, outputs)
    matched.reference_failed = [outputs[key].id for key in reference_failed if key in outputs]
    names = fields or _common_fields(matched)
    if not names:
        raise EvalInputError(_nothing_to_compare(matched, output, reference))
    reports = {name: evaluate_field(name, matched.pairs) for name in names}
    unknown = [name for name, report in reports.items() if report.compared == 0]
    if unknown:
        raise EvalInputError(f"--field {', '.join(unknown)}: no reference row has that field")
    return Report(
        output=output,
        reference=reference,
        reference_kind="output" if against else "gold",
        output_rows=len(outputs),
        reference_rows=len(references),
        matched=matched,
        fields=reports,
        warnings=warnings,
        panel=evaluate_members(matched, reports),
    )


def _nothing_to_compare(matched: Matched, output: Path, reference: Path) -> str:
    if not matched.pairs:
        return f"no row of {output} has an id in {reference}"
    if not any(out.ok for _, out in matched.pairs):
        return f"every matched row of {output} failed: name the fields to score with --field"
    return f"no field to compare: no field is named in both {output} and {reference}"


def _common_fields(matched: Matched) -> list[str]:
    in_output = {name for _, out in matched.pairs for name in out.values}
    seen: dict[str, None] = {}
    for ref, _ in matched.pairs:
        seen.update((name, None) for name in ref.values if name in in_output)
    return list(seen)
