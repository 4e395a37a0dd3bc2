"""One compared field: its kind, whether it is categorical, and every figure `eval` reports on it.

What is compared: the reference rows (gold, or the other run) that have the field, each with its
output row; a failed output row, or an ok row without the field, is a wrong answer. Strings are
compared trimmed and case-folded (`" Sport"` matches `"sport"`), numbers by value (1 == 1.0),
booleans as themselves; anything else (lists, null, mixed types) as exact JSON.

Categorical, with no schema to ask (an output row records only a fingerprint of its settings):
a boolean field, or a field of strings or of integers with at most `CATEGORICAL_MAX_VALUES`
distinct values over reference and output together, and no more distinct values than rows
compared (free text, where nearly every answer is new, is not categorical).
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from batch.quality import metrics
from batch.quality.load import OutputRow, ReferenceRow

CATEGORICAL_MAX_VALUES = 20
# Confidence bands [from, to); the last one includes 1.0.
BAND_EDGES = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0)
EXAMPLES_PER_PAIR = 3


def normalise(value: Any) -> tuple[str, Any]:
    """(kind, comparable value): the kind keeps True apart from 1 and "1" apart from 1."""
    if isinstance(value, bool):
        return "bool", value
    if isinstance(value, int | float):
        return "number", value
    if isinstance(value, str):
        return "string", value.strip().casefold()
    if value is None:
        return "null", None
    return "json", json.dumps(value, sort_keys=True)


def label(value: tuple[str, Any] | str) -> str:
    """How a normalised value is shown and keyed in the report."""
    if isinstance(value, str):  # FAILED or MISSING
        return value
    kind, plain = value
    return str(plain) if kind in ("string", "json") else json.dumps(plain)


@dataclass(frozen=True, slots=True)
class Mismatch:
    id: str
    reference: str
    output: str
    context: str | None


@dataclass(slots=True)
class FieldReport:
    name: str
    kind: str  # string, number, bool, mixed
    categorical: bool
    compared: int
    correct: int
    failed: int
    missing_value: int
    accuracy: float | None
    kappa: float | None = None
    macro_f1: float | None = None
    per_value: dict[str, metrics.PerValue] | None = None
    confusion: tuple[list[str], list[str], list[list[int]]] | None = None
    distribution: tuple[dict[str, int], dict[str, int]] | None = None
    mae: float | None = None
    mae_rows: int = 0
    mismatches: tuple[Mismatch, ...] = ()
    confidence_bands: list[dict[str, Any]] | None = None
    agreement_bands: list[dict[str, Any]] | None = None  # a panel's output only

    def confused_pairs(self) -> list[dict[str, Any]]:
        """The (reference, output) pairs that went wrong, most frequent first."""
        groups: dict[tuple[str, str], list[Mismatch]] = {}
        for miss in self.mismatches:
            groups.setdefault((miss.reference, miss.output), []).append(miss)
        ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
        return [
            {
                "reference": ref,
                "output": out,
                "count": len(rows),
                "examples": [{"id": m.id, "context": m.context} for m in rows[:EXAMPLES_PER_PAIR]],
            }
            for (ref, out), rows in ordered
        ]


def evaluate_field(name: str, pairs: Sequence[tuple[ReferenceRow, OutputRow]]) -> FieldReport:
    compared = [(ref, out) for ref, out in pairs if name in ref.values]
    reference = [normalise(ref.values[name]) for ref, _ in compared]
    output = [_output_value(out, name) for _, out in compared]
    kind = _kind(reference, output)
    correct = sum(r == o for r, o in zip(reference, output, strict=True))
    report = FieldReport(
        name=name,
        kind=kind,
        categorical=_categorical(kind, reference, output),
        compared=len(compared),
        correct=correct,
        failed=output.count(metrics.FAILED),
        missing_value=output.count(metrics.MISSING),
        accuracy=metrics.accuracy(reference, output),
        mismatches=tuple(
            Mismatch(ref.id, label(r), label(o), ref.context)
            for (ref, _), r, o in zip(compared, reference, output, strict=True)
            if r != o
        ),
        confidence_bands=_bands(
            [out.confidence.get(name) for _, out in compared], reference, output
        ),
        agreement_bands=_bands(
            [(out.agreement or {}).get(name) for _, out in compared], reference, output
        ),
    )
    if report.categorical:
        _add_categorical(report, reference, output)
    if kind == "number":
        numbers = [
            (r[1], o[1])
            for r, o in zip(reference, output, strict=True)
            if r[0] == "number" and isinstance(o, tuple) and o[0] == "number"
        ]
        report.mae, report.mae_rows = metrics.mean_absolute_error(numbers), len(numbers)
    return report


def _output_value(out: OutputRow, name: str) -> tuple[str, Any] | str:
    if not out.ok:
        return metrics.FAILED
    if name not in out.values:
        return metrics.MISSING
    return normalise(out.values[name])


def _kind(reference: list[tuple[str, Any]], output: list[Any]) -> str:
    kinds: set[str] = {
        v[0] for v in [*reference, *output] if isinstance(v, tuple) and v[1] is not None
    }
    only = kinds.pop() if len(kinds) == 1 else "mixed"
    return only if only in ("string", "number", "bool") else "mixed"


def _categorical(kind: str, reference: list[tuple[str, Any]], output: list[Any]) -> bool:
    if kind == "bool":
        return True
    real = [v for v in [*reference, *output] if isinstance(v, tuple)]
    if kind == "number" and not all(isinstance(v[1], int) for v in real):
        return False
    distinct = len(set(real))
    return kind in ("string", "number") and distinct <= min(CATEGORICAL_MAX_VALUES, len(reference))


def _add_categorical(report: FieldReport, reference: list[Any], output: list[Any]) -> None:
    values = sorted({*reference, *(o for o in output if isinstance(o, tuple))}, key=label)
    columns = [*values, *(n for n in metrics.NON_VALUES if n in output)]
    ref_labels = [label(v) for v in reference]
    out_labels = [label(v) for v in output]
    names = [label(v) for v in values]
    column_names = [label(v) for v in columns]
    report.kappa = metrics.cohen_kappa(ref_labels, out_labels)
    table = metrics.per_value(ref_labels, out_labels, names)
    report.per_value = {str(k): v for k, v in table.items()}
    report.macro_f1 = metrics.macro_f1(table)
    counts = metrics.confusion(ref_labels, out_labels, names, column_names)
    report.confusion = (names, column_names, counts)
    ref_counts, out_counts = Counter(ref_labels), Counter(out_labels)
    report.distribution = (
        {n: ref_counts[n] for n in names},
        {n: out_counts[n] for n in column_names},
    )


def _bands(
    scores: Sequence[float | None], reference: Sequence[Hashable], output: Sequence[Hashable]
) -> list[dict[str, Any]] | None:
    """Accuracy by band of a row's score (its confidence, or a panel's agreement), over the
    rows that have one; None when none has."""
    scored = [
        (p, r == o) for p, r, o in zip(scores, reference, output, strict=True) if p is not None
    ]
    if not scored:
        return None
    bands = []
    for low, high in itertools.pairwise(BAND_EDGES):
        last = high == BAND_EDGES[-1]
        inside = [hit for p, hit in scored if low <= p < high or (last and p == high)]
        bands.append(
            {
                "from": low,
                "to": high,
                "rows": len(inside),
                "correct": sum(inside),
                "accuracy": sum(inside) / len(inside) if inside else None,
            }
        )
    return bands
