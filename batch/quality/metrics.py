"""Agreement figures over paired labels: pure functions, no I/O.

Labels are hashable values already normalised by the caller. A predicted label that is not a
real value (a failed row, a missing field) is passed as one of `NON_VALUES`: it is always wrong,
counts in the confusion matrix and in kappa, and never gets a precision/recall row of its own.
Undefined figures are None (JSON null): kappa when chance agreement is 1 (both sides use one
single value). A value never predicted has precision 0; a value absent from the reference has
recall 0 (scikit-learn's `zero_division=0`), and both count in macro-F1, which averages over
every value seen on either side.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

FAILED = "(failed)"
MISSING = "(missing)"
NON_VALUES = (FAILED, MISSING)


@dataclass(frozen=True, slots=True)
class PerValue:
    precision: float
    recall: float
    f1: float
    support: int  # reference rows with this value
    predicted: int  # output rows with this value


def accuracy(reference: Sequence[Hashable], output: Sequence[Hashable]) -> float | None:
    if not reference:
        return None
    return sum(r == o for r, o in zip(reference, output, strict=True)) / len(reference)


def cohen_kappa(reference: Sequence[Hashable], output: Sequence[Hashable]) -> float | None:
    """(p_o - p_e) / (1 - p_e), p_e from each side's own value frequencies."""
    n = len(reference)
    if n == 0:
        return None
    observed = sum(r == o for r, o in zip(reference, output, strict=True)) / n
    ref_counts, out_counts = Counter(reference), Counter(output)
    chance = sum(ref_counts[v] * out_counts[v] for v in ref_counts) / (n * n)
    if chance == 1:
        return None
    return (observed - chance) / (1 - chance)


def per_value(
    reference: Sequence[Hashable], output: Sequence[Hashable], values: Sequence[Hashable]
) -> dict[Hashable, PerValue]:
    pairs = list(zip(reference, output, strict=True))
    table = {}
    for value in values:
        hits = sum(r == value and o == value for r, o in pairs)
        support = sum(r == value for r, _ in pairs)
        predicted = sum(o == value for _, o in pairs)
        precision = hits / predicted if predicted else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        table[value] = PerValue(precision, recall, f1, support, predicted)
    return table


def macro_f1(table: dict[Hashable, PerValue]) -> float | None:
    if not table:
        return None
    return sum(row.f1 for row in table.values()) / len(table)


def confusion(
    reference: Sequence[Hashable],
    output: Sequence[Hashable],
    rows: Sequence[Hashable],
    columns: Sequence[Hashable],
) -> list[list[int]]:
    """counts[i][j]: rows whose reference is rows[i] and whose output is columns[j]."""
    counts = Counter(zip(reference, output, strict=True))
    return [[counts[(r, c)] for c in columns] for r in rows]


def mean_absolute_error(pairs: Sequence[tuple[float, float]]) -> float | None:
    if not pairs:
        return None
    return sum(abs(r - o) for r, o in pairs) / len(pairs)
