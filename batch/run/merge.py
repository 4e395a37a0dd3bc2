"""`python -m batch merge INPUT`: the shards' outputs and summaries as one, checked against the
input: every row exactly once. Rows missing (a shard unfinished or lost: named, `shard 2 of 3`)
or present twice (shards that disagreed on N, or two runs of one shard writing to different
places) are named, and then nothing is written: a merged output is a whole one.

By default the shard outputs are those a sharded run writes beside the input
(`IN.shard-K-of-N.out.jsonl`), of one N: leftovers of another split are refused, not mixed in.
The merged output is the unsharded run's (`IN.out.jsonl`), so a later plain run resumes from it.
It keeps every line, one per input line as a plain run writes them: an id repeated in the input
(the later line failed) is named, and `eval` reads the id's ok row.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from batch.core.errors import ConfigError
from batch.core.rows import LineId, RowDefaults, RowId, id_key, id_of_record
from batch.run.summary import Retries, RunSummary
from batch.sink.records import native_view
from batch.source.builder import RowBuilder
from batch.source.reader import BOM
from batch.source.shards import row_id, shard_key, shard_of

SHOWN = 20  # ids named in a message
_SHARD_NAME = re.compile(r"\.shard-(\d+)-of-(\d+)\.out\.jsonl$")


@dataclass
class MergeReport:
    expected: int = 0
    merged: int = 0
    ok: int = 0
    error: int = 0
    missing: list[RowId] = field(default_factory=list)  # line numbers for rows without an id
    duplicated: list[RowId] = field(default_factory=list)
    unknown: list[RowId] = field(default_factory=list)  # in an output, not in the input
    repeated: list[tuple[RowId, int, int]] = field(default_factory=list)  # id, first, later line
    # The shards' outputs by K, when they are named for one N (`IN.shard-K-of-N.out.jsonl`).
    shards: dict[int, Path] = field(default_factory=dict)
    count: int | None = None

    @property
    def exact(self) -> bool:
        return not (self.missing or self.duplicated or self.unknown)

    def as_record(self) -> dict[str, Any]:
        return {
            "expected_rows": self.expected,
            "merged_rows": self.merged,
            "exactly_once": self.exact,
            "missing": self.missing,
            "duplicated": self.duplicated,
            "not_in_input": self.unknown,
        }

    def describe(self) -> str:
        lines = [
            f"{self.merged} rows merged of {self.expected} in the input "
            f"({self.ok} ok, {self.error} failed)"
        ]
        for name, ids, hint in (
            ("missing", self.missing, self._missing_hint()),
            ("in more than one output", self.duplicated, "did the shards agree on N?"),
            ("not in the input", self.unknown, "was each shard run on this input?"),
        ):
            if ids:
                lines.append(f"{len(ids)} rows {name}: {_listed(ids)}; {hint}")
        lines += self._missing_by_shard()
        for row, first, later in self.repeated[:SHOWN]:
            lines.append(
                f"id {row!r} is on lines {first} and {later} of the input: ids must be unique, "
                f"so a run labels line {first} and fails line {later}"
            )
        if len(self.repeated) > SHOWN:
            lines.append(f"and {len(self.repeated) - SHOWN} more repeated ids")
        return "\n".join(lines)

    def _missing_hint(self) -> str:
        if self.count is None:
            return "rerun the shards that hold them (the same command resumes)"
        return "their shards:"

    def _missing_by_shard(self) -> list[str]:
        """One line a shard with rows missing, when the shards are named for one N."""
        if self.count is None or not self.missing:
            return []
        count = self.count
        per_shard = Counter(shard_of(shard_key(row), count) for row in self.missing)
        lines = []
        for k, rows in sorted(per_shard.items()):
            output = self.shards.get(k)
            if output is None:
                done = "it wrote no output beside the input: run it"
            else:
                done = f"its output {output.name} lacks them: rerun it (it resumes)"
            lines.append(
                f"  shard {k} of {count}: {rows} rows missing; {done} with --shard {k}/{count}, "
                "then merge again"
            )
        return lines


def _listed(ids: list[RowId]) -> str:
    shown = ", ".join(_shown(row) for row in ids[:SHOWN])
    return shown + (f" and {len(ids) - SHOWN} more" if len(ids) > SHOWN else "")


def _shown(row: RowId) -> str:
    return f"line {row}" if isinstance(row, LineId) else repr(row)


def shard_outputs_beside(input_path: Path) -> list[Path]:
    """`IN.shard-K-of-N.out.jsonl` files beside the input, in shard order, all of one N.
    Raises `ConfigError` when they are of several N: leftovers of an earlier split."""
    name = input_path.name
    stem = name.removesuffix(".jsonl") if name.endswith(".jsonl") else input_path.stem
    found: list[tuple[tuple[int, int], Path]] = []
    for path in input_path.parent.glob(f"{stem}.shard-*-of-*.out.jsonl"):
        if match := _SHARD_NAME.search(path.name):
            found.append(((int(match[2]), int(match[1])), path))
    found.sort()
    counts = sorted({count for (count, _), _ in found})
    if len(counts) > 1:
        splits = "; ".join(
            f"into {count} ({', '.join(p.name for (n, _), p in found if n == count)})"
            for count in counts
        )
        example = input_path.parent / f"{stem}.shard-*-of-{counts[-1]}.out.jsonl"
        raise ConfigError(
            f"beside {input_path} are the shard outputs of {len(counts)} splits: {splits}. "
            "They are of different runs: name the outputs of the one to merge, e.g. "
            f"python -m batch merge {input_path} {example}, and remove the others"
        )
    return [path for _, path in found]


def _by_shard(outputs: list[Path]) -> tuple[dict[int, Path], int | None]:
    """The outputs by K, and N, when every output is named for one N."""
    named = [(_SHARD_NAME.search(path.name), path) for path in outputs]
    counts = {int(match[2]) for match, _ in named if match}
    if len(counts) != 1 or not all(match for match, _ in named):
        return {}, None
    return {int(match[1]): path for match, path in named if match}, counts.pop()


def merge_shards(
    input_path: Path, outputs: list[Path], merged_path: Path, summary_path: Path
) -> MergeReport:
    """Merges `outputs` into `merged_path`, with its summary, when every input row is there
    exactly once; otherwise writes nothing. The report says which."""
    _check_files(input_path, outputs, merged_path)
    expected, shown_id, report = _expected_rows(input_path)
    report.shards, report.count = _by_shard(outputs)
    found: Counter[str] = Counter()
    scratch = merged_path.with_name(merged_path.name + ".tmp")
    try:
        with scratch.open("wb") as merged:
            for path in outputs:
                for raw, record in _output_rows(path):
                    key = _key(record, expected)
                    found[key] += 1
                    shown_id.setdefault(key, id_of_record(record))
                    report.merged += 1
                    if record.get("status") == "ok":
                        report.ok += 1
                    else:
                        report.error += 1
                    merged.write(raw)
        report.missing = [shown_id[k] for k, n in expected.items() if found[k] < n]
        report.duplicated = [
            shown_id[k] for k, n in found.items() if k in expected and n > expected[k]
        ]
        report.unknown = [shown_id[k] for k in found if k not in expected]
        if report.exact:
            scratch.replace(merged_path)
            _write_summary(summary_path, input_path, merged_path, outputs, report)
    finally:
        scratch.unlink(missing_ok=True)
    return report


def _check_files(input_path: Path, outputs: list[Path], merged_path: Path) -> None:
    if not input_path.is_file():
        raise ConfigError(f"input file {input_path} does not exist")
    if not outputs:
        raise ConfigError(
            f"no shard outputs beside {input_path} (named like "
            f"{input_path.with_suffix('')}.shard-0-of-4.out.jsonl): name them after the input"
        )
    for path in outputs:
        if not path.is_file():
            raise ConfigError(f"shard output {path} does not exist")
        if path.resolve() == merged_path.resolve():
            raise ConfigError(f"{path} is both a shard output and the merged output: change -o")


def _expected_rows(input_path: Path) -> tuple[Counter[str], dict[str, Any], MergeReport]:
    """How many times the input holds each row's id key, how to show each, and the report
    counting them, with the ids it repeats."""
    expected: Counter[str] = Counter()
    shown_id: dict[str, Any] = {}
    first_line: dict[str, int] = {}
    report = MergeReport()
    builder = RowBuilder(RowDefaults(model=None, options={}))
    for number, raw in _input_lines(input_path):
        given = row_id(builder, number, raw)
        key = id_key(given)
        expected[key] += 1
        shown_id.setdefault(key, given)
        if (first := first_line.setdefault(key, number)) != number:
            report.repeated.append((given, first, number))
    report.expected = sum(expected.values())
    return expected, shown_id, report


def _output_rows(path: Path) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """Each whole line of a shard output, and its native record."""
    with path.open("rb") as shard:
        for raw in shard:
            if raw.endswith(b"\n"):  # else the partial last line of a killed run: not a row
                record, _ = native_view(json.loads(raw))
                yield raw, record


def _key(record: dict[str, Any], expected: Counter[str]) -> str:
    """A record's id key. A line written before `LineId` was marked holds a row without an
    id as `"id": N` on line N: when line N of the input gives no id, that is its row."""
    given = id_of_record(record)
    key = id_key(given) if given is not None else f"?{record.get('id')!r}"
    if isinstance(given, int) and not isinstance(given, LineId) and given == record.get("line"):
        by_line = id_key(LineId(given))
        if by_line in expected:
            return by_line
    return key


def _input_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """As `batch.source.reader.read_chunks` numbers them: non-blank lines, blank ones counted."""
    with path.open("rb") as source:
        for number, raw in enumerate(source, start=1):
            if number == 1:
                raw = raw.removeprefix(BOM)
            if raw.strip():
                yield number, raw


class MergedRows(BaseModel):
    total: int
    ok: int
    error: int


class MergedThroughput(BaseModel):
    rows_per_s: float


class MergeSummary(BaseModel):
    """The merged run's summary: the shards' latest runs added up, checked against the input."""

    input: str
    output: str
    merged_from: list[str]
    shard_summaries: list[str]
    rows: MergedRows  # from the merged file itself: a shard's summary counts its latest run only
    errors_by_type: dict[str, int] = Field(default_factory=dict)
    attempts: int = 0
    retries: Retries = Field(default_factory=Retries)
    usage: dict[str, int] = Field(default_factory=dict)  # of the shards' latest runs
    elapsed_s: float = 0.0
    throughput: MergedThroughput
    check: dict[str, Any] = Field(default_factory=dict)
    complete: bool = False


def _write_summary(
    path: Path, input_path: Path, merged_path: Path, outputs: list[Path], report: MergeReport
) -> None:
    """The shards' summaries added up; throughput over the longest shard's time, as the
    shards ran side by side."""
    shards: list[tuple[Path, RunSummary]] = []
    for output in outputs:
        summary_file = output.with_name(output.name.removesuffix(".jsonl") + ".summary.json")
        if summary_file.is_file():
            text = summary_file.read_text(encoding="utf-8")
            shards.append((summary_file, RunSummary.model_validate_json(text)))
    usage = Counter[str]()
    retries = Counter[str]()
    errors = Counter[str]()
    for _, shard in shards:
        usage.update(shard.usage)
        retries.update(shard.retries.by_cause)
        errors.update(shard.errors_by_type)
    elapsed = max((s.elapsed_s for _, s in shards), default=0.0)
    processed = report.ok + report.error
    merged = MergeSummary(
        input=str(input_path),
        output=str(merged_path),
        merged_from=[str(p) for p in outputs],
        shard_summaries=[str(p) for p, _ in shards],
        rows=MergedRows(total=report.expected, ok=report.ok, error=report.error),
        errors_by_type=dict(errors),
        attempts=sum(s.attempts for _, s in shards),
        retries=Retries(total=sum(retries.values()), by_cause=dict(retries)),
        usage=dict(usage),
        elapsed_s=elapsed,
        throughput=MergedThroughput(rows_per_s=round(processed / elapsed, 2) if elapsed else 0.0),
        check=report.as_record(),
        complete=report.exact
        and len(shards) == len(outputs)
        and all(s.complete for _, s in shards),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(merged.model_dump_json(indent=2) + "\n", encoding="utf-8")
