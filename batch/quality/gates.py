"""Gates: `--min-accuracy X` on every compared field, `--min NAME=X` on one field's accuracy,
`--min NAME.kappa=X` or `--min NAME.macro_f1=X` on those figures. A gate holds when the figure is
at least X (within float rounding: 7/25 computed is 0.27999..., and `kappa=0.28` should hold); an
undefined figure (kappa when both sides use one value) does not hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

METRICS = ("accuracy", "kappa", "macro_f1")
ROUNDING = 1e-9
CATEGORICAL_ONLY = ("kappa", "macro_f1")


class GateSpecError(ValueError):
    """A gate that cannot be checked: bad syntax, an unknown field, a figure the field lacks."""


@dataclass(frozen=True, slots=True)
class Gate:
    field: str
    metric: str
    minimum: float

    @property
    def name(self) -> str:
        return f"{self.field}.{self.metric}"


@dataclass(frozen=True, slots=True)
class GateResult:
    gate: Gate
    value: float | None
    passed: bool

    def describe(self) -> str:
        shown = "undefined" if self.value is None else f"{self.value:.4f}"
        verdict = "holds" if self.passed else "FAILED"
        return f"{self.gate.name} = {shown}, minimum {self.gate.minimum:g}: {verdict}"

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.gate.name,
            "field": self.gate.field,
            "metric": self.gate.metric,
            "min": self.gate.minimum,
            "value": self.value,
            "passed": self.passed,
        }


def parse_minimum(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise GateSpecError(f"{what}: {text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise GateSpecError(f"{what}: {text} is not between 0 and 1")
    return value


def parse_min(spec: str) -> Gate:
    """`NAME=X`, `NAME.kappa=X`, `NAME.macro_f1=X` (`NAME.accuracy=X` is the same as `NAME=X`)."""
    name, sep, value = spec.rpartition("=")
    if not sep or not name:
        raise GateSpecError(f"--min {spec!r}: expected NAME=X, NAME.kappa=X or NAME.macro_f1=X")
    field, dot, metric = name.rpartition(".")
    if not dot or metric not in METRICS:
        field, metric = name, "accuracy"
    return Gate(field, metric, parse_minimum(value, f"--min {spec}"))


def check(gates: list[Gate], figures: dict[str, dict[str, Any]]) -> list[GateResult]:
    """`figures`: field -> its report (`categorical` and the metric names as keys)."""
    results = []
    for gate in gates:
        report = figures.get(gate.field)
        if report is None:
            known = ", ".join(sorted(figures)) or "none"
            raise GateSpecError(f"gate {gate.name}: no compared field {gate.field!r} ({known})")
        if gate.metric in CATEGORICAL_ONLY and not report["categorical"]:
            raise GateSpecError(f"gate {gate.name}: {gate.field!r} is not categorical")
        value = report[gate.metric]
        holds = value is not None and value >= gate.minimum - ROUNDING
        results.append(GateResult(gate, value, holds))
    return results
