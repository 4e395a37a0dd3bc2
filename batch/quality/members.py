"""`eval` on a panel's output: each member measured on its own votes, beside the panel.

A member's answer on a row is the consensus of its own votes (its samples voted together, as
the run votes; one vote without --samples); a row where none of its votes is valid is a failed
row for it. Its figures are those `fields` gives the panel. Beside them: Fleiss' kappa over the
votes per categorical field, and tokens spent per correct label, for each member (its votes'
tokens) and for the panel (every vote's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from batch.labelling.votes import FleissKappa, fields_of, is_valid, majority_consensus
from batch.quality.fields import FieldReport, evaluate_field, label, normalise
from batch.quality.load import Matched, OutputRow, ReferenceRow, flatten, output_values

Pairs = Sequence[tuple[ReferenceRow, OutputRow]]


@dataclass(slots=True)
class Spent:
    """Tokens against the labels they got right."""

    tokens: int
    correct: int

    def as_json(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "correct_labels": self.correct,
            "tokens_per_correct_label": round(self.tokens / self.correct, 1)
            if self.correct
            else None,
        }


@dataclass(slots=True)
class PanelReport:
    members: dict[str, tuple[dict[str, FieldReport], Spent]]
    kappa: dict[str, float | None]
    spent: Spent


def evaluate_members(matched: Matched, fields: dict[str, FieldReport]) -> PanelReport | None:
    """None unless the output's rows carry votes."""
    pairs = [(ref, out) for ref, out in matched.pairs if out.votes is not None]
    if not pairs:
        return None
    members: dict[str, None] = {}
    for _, out in pairs:
        members.update((str(v.get("model")), None) for v in out.votes or ())
    reports = {}
    for member in members:
        own = [(ref, _members_row(out, member)) for ref, out in pairs]
        tokens = sum(_tokens(v) for _, out in pairs for v in _votes_of(out, member))
        by_field = {name: evaluate_field(name, own) for name in fields}
        reports[member] = (by_field, Spent(tokens, sum(f.correct for f in by_field.values())))
    categorical = [name for name, report in fields.items() if report.categorical]
    return PanelReport(
        members=reports,
        kappa={name: _kappa(pairs, name) for name in categorical},
        spent=Spent(sum(out.tokens for _, out in pairs), sum(f.correct for f in fields.values())),
    )


def _votes_of(out: OutputRow, member: str) -> list[dict[str, Any]]:
    return [v for v in out.votes or () if str(v.get("model")) == member]


def _members_row(out: OutputRow, member: str) -> OutputRow:
    votes = _votes_of(out, member)
    made = majority_consensus(votes, fields_of(out.agreement))
    if made is None:
        return OutputRow(out.id, False, {}, {}, "no valid vote")
    return OutputRow(out.id, True, output_values(made[0].output), {})


def _tokens(vote: dict[str, Any]) -> int:
    usage = vote.get("usage")
    if not isinstance(usage, dict):
        return 0
    return sum(n for k, n in usage.items() if k.endswith("_tokens") and isinstance(n, int))


def _kappa(pairs: Pairs, name: str) -> float | None:
    kappa = FleissKappa()
    for _, out in pairs:
        keys = []
        for vote in out.votes or ():
            output = vote.get("output")
            values = flatten(output) if isinstance(output, dict) else {"output": output}
            if is_valid(vote) and name in values:
                keys.append(label(normalise(values[name])))
        kappa.add(keys)
    return kappa.kappa
