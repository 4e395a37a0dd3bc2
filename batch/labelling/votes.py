"""A panel's votes on one row, and the consensus they make.

A vote is the record an output line keeps of one answer (`votes`):

    {"model", "sample" (with --samples), "status": "ok"|"error", "output" (ok) | "error",
     "usage", "attempts", "confidence" (with --logprobs), "same_as" | "cached", "host",
     "trace_id" (with OpenTelemetry)}

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
    """Each vote's value of the field, as a key; None where its answer lacks the field."""
    keys: list[str | None] = []
    for vote in votes:
        found, value = value_at(vote.get("output"), path)
        keys.append(value_key(value) if found and _label(value) else None)
    return keys


def _label(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


@dataclass(slots=True)
class Ballot:
    """A row's votes, read once: which are valid, and each field's key in each valid vote."""

    votes: Sequence[Vote]
    fields: Sequence[Path]
    valid: list[int]  # indices of the valid votes
    keys: dict[Path, list[str | None]]  # per field, per valid vote

    @classmethod
    def of(cls, votes: Sequence[Vote], fields: Sequence[Path]) -> Ballot:
        valid = [i for i, vote in enumerate(votes) if vote.get("status") == "ok"]
        chosen = [votes[i] for i in valid]
        return cls(votes, fields, valid, {path: field_keys(chosen, path) for path in fields})

    def majority(self, path: Path) -> Winner | None:
        """The field's most given value; a tie goes to the value given first (the earliest
        member's, in panel order). None: no vote gave one."""
        counts: Counter[str] = Counter()
        first: dict[str, int] = {}
        for n, key in enumerate(self.keys[path]):
            if key is not None:
                counts[key] += 1
                first.setdefault(key, n)
        if not counts:
            return None
        top = max(counts.values())
        key = next(k for k in first if counts[k] == top)
        return key, value_at(self.votes[self.valid[first[key]]]["output"], path)[1]

    @property
    def unanimous(self) -> bool:
        """Every valid vote gave the same answer: the same value of each categorical field (the
        same whole output when there is none). False without a valid vote."""
        if not self.valid:
            return False
        if not self.fields:
            outputs = [self.votes[i].get("output") for i in self.valid]
            return all(output == outputs[0] for output in outputs)
        return all(len(set(keys)) == 1 for keys in self.keys.values())


@dataclass(slots=True)
class Consensus:
    output: Any
    agreement: dict[str, float]  # dotted field -> share of valid votes that gave its value
    chosen: int  # the index (in the votes) of the vote the output was taken from


def consensus(ballot: Ballot, winners: dict[Path, Winner]) -> Consensus | None:
    """The output the valid votes make with the fields' `winners`; None: no valid vote."""
    valid, keys, votes = ballot.valid, ballot.keys, ballot.votes
    if not valid:
        return None
    agreeing = [
        sum(keys[path][n] == winner[0] for path, winner in winners.items())
        for n in range(len(valid))
    ]
    best = max(range(len(valid)), key=lambda n: (agreeing[n], -n))
    output = votes[valid[best]].get("output")
    if agreeing[best] < len(winners):  # no vote agrees on every field: the winners set in
        output = copy.deepcopy(output)
        for path, (_, value) in winners.items():
            _set(output, path, value)
    agreement = {}
    for path in ballot.fields:
        won = winners.get(path)
        agreeing_votes = keys[path].count(won[0]) if won is not None else 0
        agreement[dotted(path)] = _rounded(agreeing_votes / len(valid))
    return Consensus(output, agreement, valid[best])


def majority_consensus(
    votes: Sequence[Vote], fields: Sequence[Path], ballot: Ballot | None = None
) -> tuple[Consensus, dict[str, float]] | None:
    """The majority's consensus and its confidence (each field's vote share)."""
    ballot = ballot or Ballot.of(votes, fields)
    if len(ballot.valid) == 1:  # one valid vote (a one-member panel): it is the consensus
        agreement = {dotted(p): float(ballot.keys[p][0] is not None) for p in fields}
        only = ballot.valid[0]
        return Consensus(ballot.votes[only].get("output"), agreement, only), dict(agreement)
    winners = {path: won for path in fields if (won := ballot.majority(path)) is not None}
    found = consensus(ballot, winners)
    if found is None:
        return None
    return found, dict(found.agreement)


def unanimous(votes: Sequence[Vote], fields: Sequence[Path]) -> bool:
    return Ballot.of(votes, fields).unanimous


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

    def add(self, keys: Sequence[str | None]) -> None:
        if len(keys) < 2:
            return  # one vote agrees with nothing: the row says nothing of agreement
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
