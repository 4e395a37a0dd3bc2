"""Reading an output file and its reference (a gold file, or another run's output), and matching
their rows by id.

Ids are matched as text: OpenAI's `custom_id` is always a string, so a gold row `{"id": 7}`
must meet the output line `{"custom_id": "7"}`. A row without an id is known by its line number
(from 1), as in a run, and kept apart from the ids rows give: shown as `line 7`, it meets the
output line a run marks `"id_from_line": true`. An id on several lines of an output is read from
its ok line (a repeated id fails on its later line), with a warning. OpenAI Batch output lines
written elsewhere (no native record under `batch`) are
read from the reply's content. Gold values are the row's `expected` object when it has one,
else its top-level fields (so an input file that carries its labels is its own gold file). A
text-mode output (a string, no schema) is the field `output`, compared with the gold `output`.
Nested objects are flattened to dotted paths (`address.city`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batch.core.rows import LineId, id_of_record
from batch.sink.records import native_view

ID_FIELDS = ("id", "custom_id")
SHOWN_REPEATS = 5  # ids a warning names
TEXT_OUTPUT = "output"
# Gold fields that are never labels: the row's id, its wrapper, and what a run reads as input.
NOT_LABELS = frozenset(
    {*ID_FIELDS, "expected", "prompt", "messages", "model", "system", "options", "images"}
)


class EvalInputError(Exception):
    """A file that cannot be read or makes no sense as an output or a gold file (exit 2)."""


@dataclass(frozen=True, slots=True)
class OutputRow:
    id: str  # as shown: the id as text, or `line N` for a row without one
    ok: bool
    values: dict[str, Any]  # flattened output fields; empty for a failed row
    confidence: dict[str, float]
    error: str | None = None
    # `l` and the line, for a line written before a run marked rows without an id: it says
    # `"id": N` on line N, which is that row when the reference's line N gives no id.
    by_line: str | None = None
    votes: tuple[dict[str, Any], ...] | None = None  # a panel's (`votes`), as recorded
    agreement: dict[str, float] | None = None  # a panel's, per categorical field
    tokens: int = 0  # input and output tokens the line's usage records


@dataclass(slots=True)
class Outputs:
    rows: dict[str, OutputRow]  # by key (`row_key`)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ReferenceRow:
    id: str
    values: dict[str, Any]
    context: str | None  # a snippet of the row's input text, to show beside its errors


@dataclass(slots=True)
class Matched:
    """Reference rows paired with their output rows, and what did not pair."""

    pairs: list[tuple[ReferenceRow, OutputRow]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # reference ids with no output row
    extra: list[str] = field(default_factory=list)  # output ids with no reference row
    reference_failed: list[str] = field(default_factory=list)  # --against: failed in OTHER


def read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a line that is not an object is an error."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalInputError(f"cannot read {path}: {exc}") from exc
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalInputError(f"{path}:{number}: not JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise EvalInputError(f"{path}:{number}: not a JSON object")
        rows.append((number, record))
    return rows


def row_key(record: dict[str, Any], line: int) -> str:
    """What rows are matched by: `i` and the id as text, or `l` and the line number of a row
    without one (`line`, or the run's `LineId` of an output record)."""
    native = id_of_record(record)
    if isinstance(native, LineId):
        return f"l{native}"
    for name in ID_FIELDS:
        value = record.get(name)
        if isinstance(value, str | int) and not isinstance(value, bool):
            return f"i{value}"
    return f"l{line}"


def shown(key: str) -> str:
    """A key as messages and the report show it: the id, or `line N`."""
    return key[1:] if key[0] == "i" else f"line {key[1:]}"


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def load_outputs(path: Path) -> Outputs:
    """The rows of a run's output, native or OpenAI format. An id on several lines is read from
    its ok line (a later one wins among equals), and named in a warning."""
    rows: dict[str, OutputRow] = {}
    lines: dict[str, list[int]] = {}
    for line, record in read_jsonl(path):
        native, _ = native_view(record)
        if "status" not in native and "custom_id" in record and "response" in record:
            native = _foreign_openai(record)
        if "status" not in native:
            raise EvalInputError(f"{path}:{line}: not an output row of batch (no 'status')")
        key = row_key(native, line)
        row = _output_row(key, native)
        lines.setdefault(key, []).append(line)
        if key not in rows or row.ok or not rows[key].ok:
            rows[key] = row
    repeated = {key: at for key, at in lines.items() if len(at) > 1}
    return Outputs(rows, [_repeats(path, repeated)] if repeated else [])


def _repeats(path: Path, repeated: dict[str, list[int]]) -> str:
    named = [
        f"{_named(key)} is on {len(at)} lines ({', '.join(map(str, at))})"
        for key, at in list(repeated.items())[:SHOWN_REPEATS]
    ]
    more = len(repeated) - SHOWN_REPEATS
    return (
        f"{path}: {'; '.join(named)}{f'; and {more} more ids' if more > 0 else ''}: its ok line "
        "is read. A run fails an id's later line when the input repeats it: give each row its "
        "own id"
    )


def _named(key: str) -> str:
    return f"id {key[1:]!r}" if key[0] == "i" else f"the row of line {key[1:]}"


def _foreign_openai(record: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI Batch output line from elsewhere (OpenAI, vLLM): no native record inside, so
    the output is the reply's content, parsed when it is a JSON object."""
    failed = {"id": record["custom_id"], "status": "error", "error": {"type": "openai"}}
    response = record.get("response")
    if record.get("error") or not isinstance(response, dict):
        return failed
    try:
        content = response["body"]["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return failed
    if response.get("status_code") != 200 or not isinstance(content, str):
        return failed
    try:
        parsed = json.loads(content)
    except json.JSONDecodeError:
        parsed = None
    output = parsed if isinstance(parsed, dict) else content
    return {"id": record["custom_id"], "status": "ok", "output": output}


def _output_row(key: str, native: dict[str, Any]) -> OutputRow:
    by_line = None
    given = native.get("id")
    if key[0] == "i" and isinstance(given, int) and given == native.get("line"):
        by_line = f"l{given}"
    confidence = _figures(native.get("confidence"))
    votes = native.get("votes")
    panel: dict[str, Any] = {
        "by_line": by_line,
        "votes": tuple(v for v in votes if isinstance(v, dict))
        if isinstance(votes, list)
        else None,
        "agreement": _figures(native.get("agreement")) if isinstance(votes, list) else None,
        "tokens": _tokens(native.get("usage")),
    }
    if native.get("status") != "ok":
        error = native.get("error")
        kind = error.get("type") if isinstance(error, dict) else None
        return OutputRow(shown(key), False, {}, confidence, str(kind or "error"), **panel)
    values = output_values(native.get("output"))
    return OutputRow(shown(key), True, values, confidence, **panel)


def output_values(output: Any) -> dict[str, Any]:
    """An output's fields as compared: flattened, or a text output as `output`."""
    return flatten(output) if isinstance(output, dict) else {TEXT_OUTPUT: output}


def _figures(raw: Any) -> dict[str, float]:
    items = raw.items() if isinstance(raw, dict) else []
    return {
        name: float(p)
        for name, p in items
        if isinstance(p, int | float) and not isinstance(p, bool)
    }


def _tokens(usage: Any) -> int:
    if not isinstance(usage, dict):
        return 0
    return sum(n for k, n in usage.items() if k.endswith("_tokens") and isinstance(n, int))


def load_gold(path: Path) -> dict[str, ReferenceRow]:
    rows: dict[str, ReferenceRow] = {}
    first_line: dict[str, int] = {}
    for line, record in read_jsonl(path):
        key = row_key(record, line)
        if (first := first_line.setdefault(key, line)) != line:
            raise EvalInputError(
                f"{path}: {_named(key)} is on lines {first} and {line} of the gold file: "
                "give each row its own id"
            )
        expected = record.get("expected")
        if isinstance(expected, dict):
            values = flatten(expected)
        elif expected is not None:
            values = {TEXT_OUTPUT: expected}
        else:
            values = flatten({k: v for k, v in record.items() if k not in NOT_LABELS})
        rows[key] = ReferenceRow(shown(key), values, _context(record))
    return rows


def _context(record: dict[str, Any]) -> str | None:
    for name in ("text", "prompt", "input", "content"):
        value = record.get(name)
        if isinstance(value, str):
            return value if len(value) <= 160 else value[:157] + "..."
    return None


def match(reference: dict[str, ReferenceRow], outputs: dict[str, OutputRow]) -> Matched:
    matched = Matched()
    outputs = _by_line(reference, outputs)
    for key, gold in reference.items():
        out = outputs.get(key)
        if out is None:
            matched.missing.append(gold.id)
        else:
            matched.pairs.append((gold, out))
    matched.extra = [out.id for key, out in outputs.items() if key not in reference]
    return matched


def _by_line(
    reference: dict[str, ReferenceRow], outputs: dict[str, OutputRow]
) -> dict[str, OutputRow]:
    """`outputs`, with each unmarked `"id": N` on line N (`OutputRow.by_line`) taken for the
    row of line N when the reference's line N gives no id: then no row gave the id N there."""
    moved = {
        key: line
        for key, row in outputs.items()
        if (line := row.by_line) is not None and line in reference and line not in outputs
    }
    if not moved:
        return outputs
    return {moved.get(key, key): row for key, row in outputs.items()}


def load_against(path: Path) -> tuple[dict[str, ReferenceRow], list[str], list[str]]:
    """Another run's ok rows as the reference, the keys that failed in it (left out), and the
    warnings about its rows."""
    reference: dict[str, ReferenceRow] = {}
    failed = []
    other = load_outputs(path)
    for key, row in other.rows.items():
        if row.ok:
            reference[key] = ReferenceRow(row.id, row.values, None)
        else:
            failed.append(key)
    return reference, failed, other.warnings
