"""A panel's votes on one row, and the consensus they make.

A vote is the record an output line keeps of one answer (`votes`):

    {"model", "sample" (with --samples), "status": "ok"|"error", "output" (ok) | "error",
     "usage", "attempts", "confidence" (with --logprobs), "same_as" | "cached", "host"}

The consensus takes each categorical field (core/categories.py) from the vote (majority, or
the value Dawid-Skene's posterior favours, labelling/dawid_skene.py); a field's `agreement` is
the share of the valid votes that gave the consensus value. The other fields come from the
earliest valid vote that agrees with the consensus on every categorical field (else on most of
them), so that a free-text field is one model's whole answer, never a patchwork.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from batch.core.categories import Path, dotted, value_at, value_key

Vote = dict[str, Any]
Winner = tuple[str, Any]  # a field's consensus value: its key (`value_key`) and the value
DIGITS = 4  # of a share or a posterior, as confidence has


def is_valid(vote: Vote) -> bool:
    return vote.get("status") == "ok"


def voter_of(vote: Vote) -> tuple[str, int | None]:
    """Who cast it: the model, and the sample (None without --samples)."""
    sample = vote.get("sample")
    return str(vote.get("model")), sample if isinstance(sample, int) else None


def fields_of(agreement: Any) -> list[Path]:
    """The categorical fields an output line recorded (its `agreement`'s keys)."""
    return [tuple(name.split(".")) for name in agreement] if isinstance(agreement, dict) else []


def field_keys(votes: Iterable[Vote], path: Path) -> list[str | None]:
    """Each valid vote's value of the field, as a key; None where its answer lacks the field."""
    keys: list[str | None] = []
    for vote in votes:
        found, value = value_at(vote.get("output"), path)
        keys.append(value_key(value) if found and _label(value) else None)
    return keys


def _label(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def majority(votes: Sequence[Vote], path: Path) -> tuple[Winner, float] | None:
    """The most given value of the field among the valid votes, and its share; a tie goes to
    the value given first (the earliest member's, in panel order). None: no vote gave one."""
    valid = [v for v in votes if is_valid(v)]
    counts: Counter[str] = Counter()
    first: dict[str, Any] = {}
    for vote, key in zip(valid, field_keys(valid, path), strict=True):
        if key is not None:
            counts[key] += 1
            first.setdefault(key, value_at(vote["output"], path)[1])
    if not counts:
        return None
    top = max(counts.values())
    key = next(k for k in first if counts[k] == top)
    return (key, first[key]), top / len(valid)


@dataclass(slots=True)
class Consensus:
    output: Any
    agreement: dict[str, float]  # dotted field -> share of valid votes that gave its value
    chosen: int  # the index (in the votes) of the vote the output was taken from


def consensus(
    votes: Sequence[Vote], winners: dict[Path, Winner], fields: Sequence[Path]
) -> Consensus | None:
    """The output the valid votes make with the fields' `winners`; None: no valid vote."""
    valid = [i for i, v in enumerate(votes) if is_valid(v)]
    if not valid:
        return None
    keys = {path: field_keys([votes[i] for i in valid], path) for path in fields}
    agreeing = [
        sum(keys[path][n] == winners[path][0] for path in winners) for n in range(len(valid))
    ]
    best = max(range(len(valid)), key=lambda n: (agreeing[n], -n))
    chosen = valid[best]
    output = votes[chosen].get("output")
    if agreeing[best] < len(winners):  # no vote agrees on every field: the winners set in
        output = copy.deepcopy(output)
        for path, (_, value) in winners.items():
            _set(output, path, value)
    agreement = {
        dotted(path): _rounded(
            sum(k == winners[path][0] for k in keys[path]) / len(valid) if path in winners else 0.0
        )
        for path in fields
    }
    return Consensus(output, agreement, chosen)


def majority_consensus(
    votes: Sequence[Vote], fields: Sequence[Path]
) -> tuple[Consensus, dict[str, float]] | None:
    """The majority's consensus and its confidence (each field's vote share)."""
    winners: dict[Path, Winner] = {}
    for path in fields:
        if (won := majority(votes, path)) is not None:
            winners[path] = won[0]
    found = consensus(votes, winners, fields)
    if found is None:
        return None
    return found, {name: share for name, share in found.agreement.items()}


def unanimous(votes: Sequence[Vote], fields: Sequence[Path]) -> bool:
    """Every valid vote gave the same answer: the same value of each categorical field (the
    same whole output when there is none). False without a valid vote."""
    valid = [v for v in votes if is_valid(v)]
    if not valid:
        return False
    if not fields:
        return all(v.get("output") == valid[0].get("output") for v in valid)
    return all(len(set(field_keys(valid, path))) == 1 for path in fields)


def summed(votes: Iterable[Vote], key: str) -> dict[str, int] | int:
    """`usage` (a table) or `attempts` (a number) summed over the votes: the line's own."""
    if key == "attempts":
        return sum(int(v.get("attempts") or 0) for v in votes)
    total: Counter[str] = Counter({"requests": 0, "input_tokens": 0, "output_tokens": 0})
    for vote in votes:
        usage = vote.get("usage")
        if isinstance(usage, dict):
            total.update({k: int(n) for k, n in usage.items() if isinstance(n, int)})
    return dict(total)


def _set(output: Any, path: Path, value: Any) -> None:
    for part in path[:-1]:
        if not isinstance(output, dict):
            return
        output = output.setdefault(part, {})
    if isinstance(output, dict):
        output[path[-1]] = value


def _rounded(share: float) -> float:
    return float(f"{share:.{DIGITS}g}")


class FleissKappa:
    """Fleiss' kappa over rows, added one at a time: each row's votes on one field.

    Rows may have different numbers of votes (a failed vote, escalation): each row's agreement
    is over its own pairs of votes, and rows with fewer than two votes are left out. With the
    same number of votes on every row this is Fleiss' (1971) kappa exactly.
    """

    def __init__(self) -> None:
        self.rows = 0
        self._agreement = 0.0  # sum over rows of the share of agreeing pairs
        self._values: Counter[str] = Counter()
        self._votes = 0

    def add(self, keys: Iterable[str | None]) -> None:
        counts = Counter(k for k in keys if k is not None)
        n = sum(counts.values())
        if n < 2:
            return
        self.rows += 1
        self._agreement += (sum(c * c for c in counts.values()) - n) / (n * (n - 1))
        self._values.update(counts)
        self._votes += n

    @property
    def kappa(self) -> float | None:
        """None when undefined: no row with two votes, or every vote the same value."""
        if not self.rows:
            return None
        observed = self._agreement / self.rows
        chance = sum((c / self._votes) ** 2 for c in self._values.values())
        if chance >= 1:
            return None
        return _rounded((observed - chance) / (1 - chance))
