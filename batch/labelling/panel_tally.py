"""A panel's figures over a run, for its summary (`panel`): per member its requests, tokens,
valid votes and agreement with the consensus; the rows all votes agreed on; Fleiss' kappa per
categorical field; the requests escalation saved."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from batch.core.categories import dotted, value_at, value_key
from batch.core.rows import RowResult
from batch.labelling.votes import Ballot, FleissKappa

DIGITS = 4


class _Member:
    def __init__(self) -> None:
        self.requests = self.input_tokens = self.output_tokens = 0
        self.valid_votes = 0
        self.agreeing: Counter[str] = Counter()

    def as_record(self, fields: Iterable[str]) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "valid_votes": self.valid_votes,
            "agreement": {name: _share(self.agreeing[name], self.valid_votes) for name in fields},
        }


class PanelTally:
    def __init__(self, members: Sequence[str], vote: str = "majority") -> None:
        self.vote = vote
        self.members = {name: _Member() for name in members}
        self.rows = 0  # ok rows
        self.unanimous = 0
        self.saved = 0  # requests --escalate did not send
        self.kappa: dict[str, FleissKappa] = {}

    def asked(self, model: str, result: RowResult) -> None:
        """The requests a fresh vote of `model` cost this run."""
        if (member := self.members.get(model)) is not None:
            member.requests += result.usage.requests
            member.input_tokens += result.usage.input_tokens
            member.output_tokens += result.usage.output_tokens

    def observe(self, ballot: Ballot, output: Any) -> None:
        """An ok row's votes beside its consensus `output`."""
        self.rows += 1
        self.unanimous += ballot.unanimous
        members = [self.members.get(str(ballot.votes[i].get("model"))) for i in ballot.valid]
        for path, keys in ballot.keys.items():
            name = dotted(path)
            self.kappa.setdefault(name, FleissKappa()).add(keys)
            found, value = value_at(output, path)
            winner = value_key(value) if found else None
            for member, key in zip(members, keys, strict=True):
                if member is not None and key is not None and key == winner:
                    member.agreeing[name] += 1
        for member in members:
            if member is not None:
                member.valid_votes += 1

    def take_votes(self, other: PanelTally) -> None:
        """The figures of `other`'s votes in place of these (not the requests): the output was
        re-voted, and `other` saw it whole."""
        for name, member in self.members.items():
            counted = other.members.get(name, _Member())
            member.valid_votes, member.agreeing = counted.valid_votes, counted.agreeing
        self.rows, self.unanimous, self.kappa = other.rows, other.unanimous, other.kappa

    def as_record(self) -> dict[str, Any]:
        return {
            "vote": self.vote,
            "members": {n: m.as_record(self.kappa) for n, m in self.members.items()},
            "rows": self.rows,
            "unanimous": self.unanimous,
            "kappa": {name: k.kappa for name, k in self.kappa.items()},
            "requests_saved": {"escalation": self.saved},
        }


def _share(part: int, whole: int) -> float | None:
    return float(f"{part / whole:.{DIGITS}g}") if whole else None


def panel_lines(panel: dict[str, Any], *, costs: bool = True) -> list[str]:
    """The summary's lines about a panel (`costs`: its requests and tokens too)."""
    kappa = ", ".join(
        f"{name} {'n/a' if k is None else f'{k:.3f}'}" for name, k in panel["kappa"].items()
    )
    lines = [
        f"panel ({panel['vote']}): {panel['unanimous']} of {panel['rows']} ok rows unanimous"
        + (f"; Fleiss' kappa {kappa}" if kappa else "")
    ]
    for name, member in panel["members"].items():
        agreement = ", ".join(
            f"{field} {'n/a' if share is None else f'{share:.0%}'}"
            for field, share in member["agreement"].items()
        )
        tokens = member["input_tokens"] + member["output_tokens"]
        cost = f"{member['requests']} requests, {tokens} tokens, " if costs else ""
        lines.append(
            f"  {name}: {cost}{member['valid_votes']} valid votes"
            + (f", agree with the consensus on {agreement}" if agreement else "")
        )
    if saved := panel["requests_saved"]["escalation"]:
        lines.append(f"  requests saved by --escalate: {saved}")
    return lines
