"""Dawid and Skene (1979): which annotator to trust, learned from their disagreements alone.

Each annotator (a panel's member) has a confusion matrix: the chance it answers k when the true
value is c. EM starts from the majority's share of each value per row, then alternates: the
matrices and the values' priors from the rows' posteriors (M), the posteriors from the
matrices and priors (E), until the evidence lower bound gains less than `tol`. This follows
crowd-kit's `DawidSkene` step for step (its tests check the two agree on the same votes).

crowd-kit is not used at run time: it brings pandas, scikit-learn and transformers (about a
gigabyte, seconds to import) to do what is here a few loops. The loops run over the distinct
patterns of votes, not over the rows: rows whose members answered alike have one posterior, so a
run of a million rows costs what one of a few dozen does.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

EPS = 1e-10  # crowd-kit's floor for a probability
Answer = tuple[str, str]  # (annotator, label)
Pattern = tuple[tuple[str, str, int], ...]  # (annotator, label, times), sorted


@dataclass
class _Fit:
    labels: list[str]
    patterns: list[Pattern]
    weights: list[int]
    probas: list[list[float]] = field(default_factory=list)
    priors: list[float] = field(default_factory=list)
    errors: dict[tuple[str, str], list[float]] = field(default_factory=dict)


def dawid_skene(
    rows: Sequence[Sequence[Answer]], *, iterations: int = 100, tol: float = 1e-5
) -> list[dict[str, float]]:
    """Each row's posterior over the labels seen anywhere (empty for a row with no answer)."""
    counted = [
        tuple(sorted((who, label, n) for (who, label), n in Counter(row).items())) for row in rows
    ]
    distinct = Counter(pattern for pattern in counted if pattern)
    if not distinct:
        return [{} for _ in rows]
    fit = _Fit(
        labels=sorted({label for row in rows for _, label in row}),
        patterns=list(distinct),
        weights=list(distinct.values()),
    )
    fit.probas = [_majority(fit.labels, p) for p in fit.patterns]
    fit.priors = _priors(fit)
    fit.errors = _m_step(fit)
    loss = -math.inf
    for _ in range(iterations):
        fit.probas = [_e_step(fit, p) for p in fit.patterns]
        fit.priors = _priors(fit)
        fit.errors = _m_step(fit)
        new_loss = _lower_bound(fit)
        if new_loss - loss < tol:
            break
        loss = new_loss
    posterior = {
        p: dict(zip(fit.labels, q, strict=True))
        for p, q in zip(fit.patterns, fit.probas, strict=True)
    }
    return [posterior[p] if p else {} for p in counted]


def _majority(labels: list[str], pattern: Pattern) -> list[float]:
    counts = Counter[str]()
    for _, label, n in pattern:
        counts[label] += n
    total = sum(counts.values())
    return [counts[label] / total for label in labels]


def _priors(fit: _Fit) -> list[float]:
    total = sum(fit.weights)
    return [
        sum(w * q[c] for w, q in zip(fit.weights, fit.probas, strict=True)) / total
        for c in range(len(fit.labels))
    ]


def _m_step(fit: _Fit) -> dict[tuple[str, str], list[float]]:
    """errors[(annotator, answered)][true]: the chance it answers so when the truth is `true`."""
    sums: dict[tuple[str, str], list[float]] = {}
    for pattern, weight, q in zip(fit.patterns, fit.weights, fit.probas, strict=True):
        for who, label, n in pattern:
            row = sums.setdefault((who, label), [0.0] * len(fit.labels))
            for c, p in enumerate(q):
                row[c] += weight * n * p
    totals: dict[str, list[float]] = {}
    for (who, _), row in sums.items():
        row[:] = [max(x, EPS) for x in row]
        total = totals.setdefault(who, [0.0] * len(fit.labels))
        for c, x in enumerate(row):
            total[c] += x
    return {
        key: [x / t for x, t in zip(row, totals[key[0]], strict=True)] for key, row in sums.items()
    }


def _e_step(fit: _Fit, pattern: Pattern) -> list[float]:
    logs = [math.log2(max(p, EPS)) for p in fit.priors]
    for who, label, n in pattern:
        for c, e in enumerate(fit.errors[(who, label)]):
            logs[c] += n * math.log2(e)
    top = max(logs)
    scaled = [2.0 ** (x - top) for x in logs]
    total = sum(scaled)
    return [x / total for x in scaled]


def _lower_bound(fit: _Fit) -> float:
    """The evidence lower bound a data row, as crowd-kit computes it (probas floored at EPS)."""
    log_priors = [math.log(max(p, EPS)) for p in fit.priors]
    joint = entropy = 0.0
    answers = 0
    for pattern, weight, q in zip(fit.patterns, fit.weights, fit.probas, strict=True):
        for who, label, n in pattern:
            errors = fit.errors[(who, label)]
            joint += (
                weight
                * n
                * sum(
                    p * (math.log(e) + lp) for p, e, lp in zip(q, errors, log_priors, strict=True)
                )
            )
            answers += weight * n
        q[:] = [max(p, EPS) for p in q]
        entropy -= weight * sum(p * math.log(p) for p in q)
    return (joint + entropy) / answers
