"""A panel in a run: its plan from the settings, the votes an earlier output holds (a rerun asks
only the voters a row lacks), and the end of the run (the Dawid-Skene re-vote, the summary).

Resume reads done rows at a glance and skips them. A panel's row is done only when its votes
need nothing of this panel: a row that lacks a voter (a member added, a vote that failed) or
has one too many (a member left out) is sent again, as a row whose input changed is: its id
stays in the done table with a digest its line cannot match, so the source sends it and its
new line replaces the old one. Its votes wait here, and the panel labeller keeps them when the
input is still the same (`PanelLabeller._kept`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import anyio

from batch.core.digest import short
from batch.core.idset import IdSet
from batch.core.rows import id_key
from batch.labelling.panel import EarlierVotes, PanelLabeller, PanelPlan, RowLabeller
from batch.labelling.votes import fields_of
from batch.run.aggregate import revote
from batch.run.config import JobConfig
from batch.sink.records import RecordCodec, native_view

log = logging.getLogger(__name__)


def sample_warnings(config: JobConfig) -> list[str]:
    """Samples at temperature 0 differ by their seed alone: most models answer alike."""
    samples = config.voting.samples
    if samples < 2 or config.prompt.options.get("temperature", 0) != 0:
        return []
    message = (
        f"--samples {samples} at temperature 0: the samples differ only by their seed, so a "
        "model likely gives the same answer each time: set --option temperature=0.7 (say)"
    )
    log.warning("%s", message)
    return [message]


def panel_plan(config: JobConfig) -> PanelPlan:
    voting = config.voting
    return PanelPlan(
        members=config.members,
        samples=voting.samples,
        escalate=voting.escalate,
        quorum=voting.quorum,
        logprobs=config.quality.asks_logprobs,
        vote=voting.vote,
    )


class PanelResume:
    """What an earlier output holds for this panel: the votes of rows to finish, and which of
    its ok rows must be sent again."""

    def __init__(self) -> None:
        self.earlier: EarlierVotes = {}
        self._reopen: dict[str, int] = {}  # ok rows to send again -> their short digest

    @classmethod
    def read(cls, path: Path, codec: RecordCodec, plan: PanelPlan) -> PanelResume:
        """Reads every line of `path` written under these settings (others are the refusal's
        business, which comes next)."""
        found = cls()
        if not path.exists():
            return found
        with path.open("rb") as source:
            for raw in source:
                found._line(raw, codec, plan)
        return found

    def _line(self, raw: bytes, codec: RecordCodec, plan: PanelPlan) -> None:
        try:
            native, _ = native_view(json.loads(raw))
        except ValueError:
            return  # a line cut short by a kill: its row runs again
        votes, row_id = native.get("votes"), native.get("id")
        if not isinstance(votes, list) or native.get("config") != codec.fingerprint:
            return
        if isinstance(row_id, bool) or not isinstance(row_id, str | int):
            return
        key, digest = id_key(row_id), str(native.get("input_digest") or "")
        ok = native.get("status") == "ok"
        if ok and plan.complete(votes, fields_of(native.get("agreement"))):
            self.earlier.pop(key, None)  # a later line of an id is its newer label
            self._reopen.pop(key, None)
            return
        self.earlier[key] = (digest, votes)
        if ok:
            self._reopen[key] = short(digest)
        else:
            self._reopen.pop(key, None)  # failed: dropped from the output, labelled again

    def reopen(self, done: IdSet) -> None:
        """Gives each row to send again a digest its line cannot have (see the module)."""
        for key, digest in self._reopen.items():
            if key in done:
                done.add(key, digest ^ 1 or 2)
        if reopened := len(self._reopen):
            log.info("panel: %d done rows lack votes of this panel, or have extra", reopened)


async def prepare_panel(
    config: JobConfig, codec: RecordCodec, plan: PanelPlan
) -> PanelResume | None:
    """The earlier output's votes, read before resume compacts it (failed rows' votes too)."""
    if not config.voting.active or config.files.overwrite:
        return None
    return await anyio.to_thread.run_sync(PanelResume.read, config.output_path, codec, plan)


def panel_labeller(
    config: JobConfig, inner: RowLabeller, resume: PanelResume | None
) -> PanelLabeller:
    return PanelLabeller(inner, panel_plan(config), resume.earlier if resume else None)


async def finish_panel(config: JobConfig, labeller: PanelLabeller) -> None:
    """--vote dawid-skene: the output re-voted once, now that every row's votes are in."""
    if config.voting.vote != "dawid-skene" or not config.output_path.exists():
        return
    done = await anyio.to_thread.run_sync(revote, config.output_path, "dawid-skene")
    labeller.tally.take_votes(done.tally)
    log.info("dawid-skene: %d rows re-voted, %d outputs changed", done.rows, done.changed)
