"""`python -m batch merge INPUT`: the shards' outputs and summaries as one, checked against the
input: every row exactly once. Rows missing (a shard unfinished or lost) or present twice
(shards that disagreed on N, or two runs of one shard writing to different places) are named.

By default the shard outputs are those a sharded run writes beside the input
(`IN.shard-K-of-N.out.jsonl`); the merged output is the unsharded run's (`IN.out.jsonl`), so a
later plain run resumes from it.
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
from batch.core.rows import RowDefaults, id_key, id_of_record
from batch.run.summary import Retries, RunSummary
from batch.sink.records import native_view
from batch.source.builder import RowBuilder
from batch.source.reader import BOM
from batch.source.shards import row_id

SHOWN = 20  # ids named in the message; the summary lists them all
_SHARD_NAME = re.compile(r"\.shard-(\d+)-of-(\d+)\.out\.jsonl$")


@dataclass
class MergeReport:
    expected: int = 0
    merged: int = 0
    ok: int = 0
    error: int = 0
    missing: list[Any] = field(default_factory=list)  # ids (line numbers for rows without one)
    duplicated: list[Any] = field(default_factory=list)
    unknown: list[Any] = field(default_factory=list)  # in an output, not in the input

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
            ("missing", self.missing, "rerun the shards that hold them (same command)"),
            ("in more than one output", self.duplicated, "did the shards agree on N?"),
            ("not in the input", self.unknown, "was each shard run on this input?"),
        ):
            if ids:
                shown = ", ".join(map(repr, ids[:SHOWN])) + (" ..." if len(ids) > SHOWN else "")
                lines.append(f"{len(ids)} rows {name}: {shown}; {hint}")
        return "\n".join(lines)


def shard_outputs_beside(input_path: Path) -> list[Path]:
    """`IN.shard-K-of-N.out.jsonl` files beside the input, in shard order."""
    name = input_path.name
    stem = name.removesuffix(".jsonl") if name.endswith(".jsonl") else input_path.stem
    found: list[tuple[tuple[int, int], Path]] = []
    for path in input_path.parent.glob(f"{stem}.shard-*-of-*.out.jsonl"):
        if match := _SHARD_NAME.search(path.name):
            found.append(((int(match[2]), int(match[1])), path))
    return [path for _, path in sorted(found)]


def merge_shards(
    input_path: Path, outputs: list[Path], merged_path: Path, summary_path: Path
) -> MergeReport:
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
    expected: Counter[str] = Counter()
    shown_id: dict[str, Any] = {}
    builder = RowBuilder(RowDefaults(model=None, options={}))
    for number, raw in _input_lines(input_path):
        given = row_id(builder, number, raw)
        key = id_key(given)
        expected[key] += 1
        shown_id.setdefault(key, given)
    report = MergeReport(expected=sum(expected.values()))
    found: Counter[str] = Counter()
    scratch = merged_path.with_name(merged_path.name + ".tmp")
    with scratch.open("wb") as merged:
        for path in outputs:
            with path.open("rb") as shard:
                for raw in shard:
                    if not raw.endswith(b"\n"):
                        continue  # a partial last line of a killed run: not a row
                    record, _ = native_view(json.loads(raw))
                    written = id_of_record(record)
                    key = id_key(written) if written is not None else f"?{record.get('id')!r}"
                    found[key] += 1
                    shown_id.setdefault(key, written)
                    report.merged += 1
                    if record.get("status") == "ok":
                        report.ok += 1
                    else:
                        report.error += 1
                    merged.write(raw)
    scratch.replace(merged_path)
    report.missing = [shown_id[k] for k, n in expected.items() if found[k] < n]
    report.duplicated = [shown_id[k] for k, n in found.items() if k in expected and n > expected[k]]
    report.unknown = [shown_id[k] for k in found if k not in expected]
    _write_summary(summary_path, input_path, merged_path, outputs, report)
    return report


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
