"""Re-voting an output from the votes its lines recorded, with no request: `batch aggregate`,
and the end of a `--vote dawid-skene` run.

Each ok line that has `votes` gets its consensus again: its `output`, `confidence` and
`agreement` (and, in an OpenAI line, the reply's content). The categorical fields are those the
line's `agreement` names. Dawid-Skene learns each member's confusion matrix per field from every
line of the output, then takes each field's most probable value; its confidence is that
value's posterior. The file is rewritten once, through a temporary file and an atomic rename.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batch.core.categories import Path as FieldPath
from batch.core.categories import dotted, value_at
from batch.labelling.dawid_skene import dawid_skene
from batch.labelling.panel_tally import PanelTally
from batch.labelling.votes import (
    Ballot,
    Consensus,
    Winner,
    consensus,
    field_keys,
    fields_of,
    is_valid,
    majority_consensus,
)
from batch.sink.records import encode_line, native_view

VOTES = ("majority", "dawid-skene")
Values = dict[FieldPath, dict[str, Any]]


@dataclass
class Revoted:
    rows: int = 0  # ok lines with votes, re-voted
    changed: int = 0  # of which the output changed
    tally: PanelTally = field(default_factory=lambda: PanelTally(()))


def revote(path: Path, vote: str, target: Path | None = None) -> Revoted:
    """Re-votes `path` into `target` (default: in place). Raises OSError, ValueError for a
    line that is not JSON."""
    values: Values = {}  # each field's key -> the value a vote gave for it, over the output
    posteriors = _posteriors(path, values) if vote == "dawid-skene" else {}
    members: dict[str, None] = {}
    for _, native in _panel_lines(path):
        members.update((str(v.get("model")), None) for v in native["votes"])
    done = Revoted(tally=PanelTally(list(members), vote))
    scratch = (target or path).with_name((target or path).name + ".vote-tmp")
    try:
        with path.open("rb") as source, scratch.open("wb") as out:
            for number, raw in enumerate(source):
                out.write(_revoted(raw, posteriors.get(number), done, values))
            out.flush()
            os.fsync(out.fileno())
        os.replace(scratch, target or path)
    finally:
        scratch.unlink(missing_ok=True)
    return done


def _panel_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line index, native record) of each ok line with votes."""
    with path.open("rb") as source:
        for number, raw in enumerate(source):
            native = _native(raw)
            if native is not None:
                yield number, native


def _native(raw: bytes) -> dict[str, Any] | None:
    if not raw.strip():
        return None
    native, _ = native_view(json.loads(raw))
    votes = native.get("votes")
    if native.get("status") != "ok" or not isinstance(votes, list):
        return None
    return native


def _revoted(
    raw: bytes,
    posterior: dict[FieldPath, dict[str, float]] | None,
    done: Revoted,
    values: Values,
) -> bytes:
    if not raw.strip():
        return raw
    record = json.loads(raw)
    native, shape = native_view(record)
    votes = native.get("votes")
    if native.get("status") != "ok" or not isinstance(votes, list):
        return raw
    fields = fields_of(native.get("agreement"))
    ballot = Ballot.of(votes, fields)
    if posterior:
        made = _by_posterior(ballot, posterior, values)
    else:
        made = majority_consensus(votes, fields, ballot)
    if made is None:
        return raw
    found, confidence = made
    done.rows += 1
    done.changed += found.output != native.get("output")
    native["output"], native["agreement"] = found.output, found.agreement
    if fields:
        native["confidence"] = confidence
    if shape == "openai":
        _set_content(record, found.output)
    done.tally.observe(ballot, found.output)
    return encode_line(record)


def _by_posterior(
    ballot: Ballot, posterior: dict[FieldPath, dict[str, float]], values: Values
) -> tuple[Consensus, dict[str, float]] | None:
    winners: dict[FieldPath, Winner] = {}
    confidence: dict[str, float] = {}
    for path in ballot.fields:
        probabilities = posterior.get(path)
        if not probabilities:
            continue
        top = max(probabilities.values())
        keys = ballot.keys[path]
        best = [k for k, p in probabilities.items() if p == top]
        key = next((k for k in keys if k in best), best[0])  # a tie: the earliest member's
        given = next((n for n, k in enumerate(keys) if k == key), None)
        if given is None:  # no vote of this row gave it: the value another row's vote gave
            value = values[path][key]
        else:
            value = value_at(ballot.votes[ballot.valid[given]]["output"], path)[1]
        winners[path] = (key, value)
        confidence[dotted(path)] = float(f"{top:.4g}")
    found = consensus(ballot, winners)
    return None if found is None else (found, confidence)


def _posteriors(path: Path, values: Values) -> dict[int, dict[FieldPath, dict[str, float]]]:
    """Each panel line's posterior per categorical field, Dawid-Skene fitted per field over
    every line (the members are the annotators)."""
    rows: dict[FieldPath, list[tuple[int, list[tuple[str, str]]]]] = {}
    for number, native in _panel_lines(path):
        valid = [v for v in native["votes"] if is_valid(v)]
        for path_ in fields_of(native.get("agreement")):
            keys = field_keys(valid, path_)
            for vote, key in zip(valid, keys, strict=True):
                if key is not None:  # a key's value as given: "3" stays a string
                    values.setdefault(path_, {}).setdefault(key, value_at(vote["output"], path_)[1])
            answers = [
                (str(v.get("model")), k) for v, k in zip(valid, keys, strict=True) if k is not None
            ]
            rows.setdefault(path_, []).append((number, answers))
    found: dict[int, dict[FieldPath, dict[str, float]]] = {}
    for path_, tasks in rows.items():
        fitted = dawid_skene([answers for _, answers in tasks])
        for (number, _), posterior in zip(tasks, fitted, strict=True):
            found.setdefault(number, {})[path_] = posterior
    return found


def _set_content(record: dict[str, Any], output: Any) -> None:
    try:
        message = record["response"]["body"]["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        return
    text = output if isinstance(output, str) else json.dumps(output, separators=(",", ":"))
    message["content"] = text
