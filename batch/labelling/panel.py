"""A panel labels a row: each member (and each of its samples) is asked through the run's own
labeller, as a row of its own, so that retries, budgets, dedup and the cache treat every
member's request as they treat any request; the votes make the consensus (labelling/votes.py).

With `escalate`, the first two members are asked first and the others only where those do not
settle the row. Votes an earlier run recorded for the same input are kept (`earlier`): a rerun
asks only the voters it lacks.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import anyio

from batch.core.categories import Allowed, Path, categorical_fields
from batch.core.errors import RowFailure
from batch.core.rows import Row, RowResult, id_key
from batch.core.schema import OutputSchema
from batch.labelling.confidence import field_confidence
from batch.labelling.panel_tally import PanelTally
from batch.labelling.votes import (
    Ballot,
    Vote,
    is_valid,
    majority_consensus,
    unanimous,
    voter_of,
)

EarlierVotes = dict[str, tuple[str, list[Vote]]]  # id key -> (input digest, its line's votes)


class RowLabeller(Protocol):
    async def label(self, row: Row) -> RowResult: ...

    def close(self) -> None: ...


class NoQuorum(RowFailure):
    """Too few of a row's votes were valid: the row fails, every vote recorded."""

    kind = "quorum"


@dataclass(frozen=True, slots=True)
class Voter:
    model: str
    sample: int | None  # 1..N with --samples, else None


@dataclass(frozen=True)
class PanelPlan:
    """Who votes on a row, and when a row has enough votes."""

    members: tuple[str, ...]
    samples: int = 1
    escalate: bool = False
    quorum: int | None = None
    logprobs: bool = False  # each vote's confidence from its tokens' log-probabilities
    vote: str = "majority"  # how the output is voted at the end; rows are voted by majority

    @property
    def voters(self) -> list[Voter]:
        samples: list[int | None] = list(range(1, self.samples + 1)) if self.samples > 1 else [None]
        return [Voter(m, s) for m in self.members for s in samples]

    def tiers(self) -> tuple[list[Voter], list[Voter]]:
        """Those asked first, and those asked only when the first do not settle the row."""
        voters = self.voters
        if not self.escalate:
            return voters, []
        cut = 2 * (self.samples if self.samples > 1 else 1)
        return voters[:cut], voters[cut:]

    def quorum_of(self, asked: int) -> int:
        return self.quorum if self.quorum is not None else asked // 2 + 1

    def settled(self, votes: Mapping[Voter, Vote], fields: Sequence[Path]) -> bool:
        """The first tier alone decides the row: every vote valid, enough, one answer."""
        first = [votes.get(v) for v in self.tiers()[0]]
        valid = [v for v in first if v is not None and is_valid(v)]
        return len(valid) == len(first) >= self.quorum_of(len(first)) and unanimous(valid, fields)

    def wanted(self, votes: Mapping[Voter, Vote], fields: Sequence[Path]) -> list[Voter]:
        """The voters a row with these votes still needs: the first tier's missing or failed
        ones, then, unless the first tier settles it, the rest's."""
        first, rest = self.tiers()
        lacking = [v for v in first if not is_valid(votes.get(v) or {})]
        if lacking or not rest or self.settled(votes, fields):
            return lacking
        return [v for v in rest if not is_valid(votes.get(v) or {})]

    def complete(self, votes: Sequence[Vote], fields: Sequence[Path]) -> bool:
        """A recorded row needs nothing of this panel: no voter to ask, none to leave out."""
        known = set(self.voters)
        by_voter = {Voter(*voter_of(v)): v for v in votes}
        return by_voter.keys() <= known and not self.wanted(by_voter, fields)


class PanelLabeller:
    def __init__(
        self,
        inner: RowLabeller,
        plan: PanelPlan,
        earlier: EarlierVotes | None = None,
    ) -> None:
        self._inner = inner
        self.plan = plan
        self.tally = PanelTally(plan.members, plan.vote)
        self._earlier = earlier or {}
        self._name = ",".join(plan.members)
        self._voters = plan.voters
        first, rest = plan.tiers()
        self._tiers = (first, rest) if rest else (first,)
        self._fields: dict[int, tuple[OutputSchema, list[Path], dict[Path, Allowed]]] = {}
        self.completed = 0  # rows done before whose votes this run completed

    def close(self) -> None:
        self._inner.close()

    async def label(self, row: Row) -> RowResult:
        if row.failure is not None or row.request is None:
            return await self._inner.label(row)
        started = time.monotonic()
        fields, allowed = self._fields_of(row.schema)
        votes = self._kept(row) if self._earlier else {}
        fresh: dict[Voter, RowResult] = {}
        for tier in self._tiers:
            if tier is not self._tiers[0] and self.plan.settled(votes, fields):
                self.tally.saved += sum(v not in votes for v in tier)  # never asked
                break
            asked = [v for v in tier if not is_valid(votes.get(v) or {})]
            if len(asked) == 1:  # one member, or a rerun that adds one: no frame between
                fresh[asked[0]] = await self._inner.label(self._member_row(row, asked[0]))
            else:
                await self._ask(row, asked, fresh)
            votes.update((v, self._vote(v, fresh[v], allowed)) for v in asked)
        for voter, asked_result in fresh.items():
            self.tally.asked(voter.model, asked_result)
        result = self._result(row, [votes[v] for v in self._voters if v in votes], fresh, fields)
        result.elapsed_s = time.monotonic() - started
        return result

    def _kept(self, row: Row) -> dict[Voter, Vote]:
        """The valid votes an earlier run recorded for this very input, by voters still on the
        panel (a failed vote is asked again)."""
        digest, earlier = self._earlier.pop(id_key(row.id), ("", []))
        if not earlier or digest != row.digest:
            return {}
        self.completed += row.replaces  # sent again for its votes: its input did not change
        known = set(self.plan.voters)
        kept = {Voter(*voter_of(v)): v for v in earlier if is_valid(v)}
        return {voter: vote for voter, vote in kept.items() if voter in known}

    async def _ask(self, row: Row, voters: list[Voter], into: dict[Voter, RowResult]) -> None:
        if not voters:
            return
        failures: list[Exception] = []

        async def ask(voter: Voter) -> None:
            try:
                into[voter] = await self._inner.label(self._member_row(row, voter))
            except Exception as exc:  # the run's trouble (fatal, a budget): raised once, below
                failures.append(exc)

        async with anyio.create_task_group() as group:
            for voter in voters:
                group.start_soon(ask, voter)
        if failures:
            raise failures[0]

    def _member_row(self, row: Row, voter: Voter) -> Row:
        assert row.request is not None
        if voter.sample is None and voter.model == row.request.model:
            return row  # the row as built (for the first member): its request is this vote's
        options = row.request.options
        if voter.sample is not None:  # its own seed, the same on every run
            seed = options.get("seed")
            base = seed if isinstance(seed, int) and not isinstance(seed, bool) else 0
            options = {**options, "seed": base + voter.sample}
        request = replace(row.request, model=voter.model, options=options)
        return replace(row, request=request)

    def _vote(self, voter: Voter, result: RowResult, allowed: dict[Path, Allowed]) -> Vote:
        vote: Vote = {"model": voter.model}
        if voter.sample is not None:
            vote["sample"] = voter.sample
        if result.failure is None:
            vote["status"] = "ok"
            vote["output"] = result.output
        else:
            vote["status"] = "error"
            vote["error"] = result.failure.as_record()
        vote["usage"] = result.usage.as_record()
        vote["attempts"] = result.attempts
        if self.plan.logprobs and allowed and result.logprobs and result.content is not None:
            confidence = field_confidence(result.content, result.logprobs, allowed)
            if confidence:
                vote["confidence"] = confidence
        if result.same_as is not None:
            vote["same_as"] = result.same_as
        if result.cached:
            vote["cached"] = True
        if result.host is not None:
            vote["host"] = result.host
        if result.trace_id is not None:  # with OpenTelemetry: each vote is a trace of its own
            vote["trace_id"] = result.trace_id
        return vote

    def _result(
        self,
        row: Row,
        votes: list[Vote],
        fresh: Mapping[Voter, RowResult],
        fields: list[Path],
    ) -> RowResult:
        assert row.request is not None
        if row.request.model != self._name:  # the line names the panel; the votes are asked
            row.request = replace(row.request, model=self._name)
        result = RowResult(row, votes=votes)
        for asked in fresh.values():  # this run's cost: the line sums every vote's
            result.attempts += asked.attempts
            result.usage.add(asked.usage)
            result.retries.extend(asked.retries)
        ballot = Ballot.of(votes, fields)
        made = majority_consensus(votes, fields, ballot)
        quorum = self.plan.quorum_of(len(votes))
        if made is None or len(ballot.valid) < quorum:
            result.failure = _no_quorum(votes, len(ballot.valid), quorum)
            return result
        found, shares = made
        self.tally.observe(ballot, found.output)
        result.output, result.agreement = found.output, found.agreement
        result.confidence = shares if fields else None
        source = fresh.get(Voter(*voter_of(votes[found.chosen])))
        if source is not None:
            result.host, result.done_reason = source.host, source.done_reason
            result.durations_ns = source.durations_ns
        _reused(result, list(fresh.values()))
        return result

    def _fields_of(self, schema: OutputSchema | None) -> tuple[list[Path], dict[Path, Allowed]]:
        if schema is None:
            return [], {}
        known = self._fields.get(id(schema))
        if known is None:
            allowed = categorical_fields(schema.json_schema)
            known = self._fields[id(schema)] = (schema, list(allowed), allowed)
        return known[1], known[2]


def _no_quorum(votes: list[Vote], valid: int, quorum: int) -> NoQuorum:
    kinds = sorted({str((v.get("error") or {}).get("type")) for v in votes if not is_valid(v)})
    return NoQuorum(
        f"{valid} of {len(votes)} votes valid, fewer than the quorum of {quorum} (failed: "
        f"{', '.join(kinds)}): each vote's error is in its `votes` entry",
        valid=valid,
        quorum=quorum,
    )


def _reused(result: RowResult, asked: list[RowResult]) -> None:
    """The row was labelled with no request of its own: every vote came from the cache, or
    every vote copied the same earlier row's."""
    if not asked:
        return
    if all(r.cached for r in asked):
        result.cached = True
    elif asked[0].same_as is not None and all(r.same_as == asked[0].same_as for r in asked):
        result.same_as = asked[0].same_as
