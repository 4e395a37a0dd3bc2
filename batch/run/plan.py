"""`python -m batch plan IN`: what a run would do, without sending anything.

Every line is read as `run` reads it (the same row source: this shard's rows, resume, ids met
twice), so the bad lines carry the messages `run` would write. Nothing is written: the earlier
output is only read. Input tokens are estimated at four characters a token, the usual rule of
thumb for English with the tokenizers Ollama's models use; the real count is the server's.
`--sample N` (in cli.py) then labels N rows and projects the rest from what they took.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio

from batch.core.errors import DuplicateId, SettingsChanged
from batch.core.idset import IdSet
from batch.core.rows import Row, RowDefaults
from batch.core.stats import RunStats
from batch.run.changed import refusal
from batch.run.config import JobConfig
from batch.run.summary import RunSummary
from batch.sink.done import collect_done
from batch.sink.records import RecordCodec
from batch.source.builder import RowBuilder
from batch.source.row_source import RowSource

CHARS_PER_TOKEN = 4
LISTED = 10_000  # bad lines and duplicates kept in the plan; the counts are always whole
SHOWN = 20  # of them printed


@dataclass
class Plan:
    input: str
    output: str
    rows_to_label: int = 0
    rows_done: int = 0
    bad_lines: list[dict[str, Any]] = field(default_factory=list)
    bad_line_count: int = 0
    duplicate_ids: list[dict[str, Any]] = field(default_factory=list)
    duplicate_count: int = 0
    estimated_input_tokens: int = 0
    sample: dict[str, Any] | None = None

    @property
    def rows_in_input(self) -> int:
        """Every row of the input (of this shard), whatever becomes of it."""
        return self.rows_to_label + self.rows_done + self.bad_line_count + self.duplicate_count

    @property
    def clean(self) -> bool:
        return not self.bad_line_count and not self.duplicate_count

    def as_record(self) -> dict[str, Any]:
        record = asdict(self)
        if record["sample"] is None:
            del record["sample"]
        return record

    def describe(self) -> str:
        lines = [
            f"{self.input}: {self.rows_to_label} rows to label, {self.rows_done} already done "
            f"in {self.output}",
            f"estimated input tokens: {self.estimated_input_tokens} "
            f"(about {CHARS_PER_TOKEN} characters a token)",
            f"bad lines: {self.bad_line_count}",
            *(f"  {bad['message']}" for bad in self.bad_lines[:SHOWN]),
            f"duplicate ids: {self.duplicate_count}",
            *(f"  {dup['message']}" for dup in self.duplicate_ids[:SHOWN]),
        ]
        if self.sample is not None:
            lines.append(describe_sample(self.sample))
        return "\n".join(lines)

    def note(self, row: Row) -> None:
        if row.failure is not None:
            entry = {"line": row.line, "id": row.id, "message": row.failure.message}
            if isinstance(row.failure, DuplicateId):
                self.duplicate_count += 1
                if len(self.duplicate_ids) < LISTED:
                    self.duplicate_ids.append(entry)
            else:
                self.bad_line_count += 1
                if len(self.bad_lines) < LISTED:
                    self.bad_lines.append(entry)
        elif row.request is not None:
            self.rows_to_label += 1
            self.estimated_input_tokens += _tokens(row)


async def make_plan(config: JobConfig, defaults: RowDefaults, fingerprint: str) -> Plan:
    codec = RecordCodec(fingerprint, config.files.output_format)
    done = IdSet()
    if not config.files.overwrite:
        try:
            done = await anyio.to_thread.run_sync(_done_ids, config.output_path, codec)
        except SettingsChanged as found:
            raise refusal(config, found) from None
    stats = RunStats()
    source = RowSource(config.input, RowBuilder(defaults), done, stats, shard=config.shard_spec)
    plan = Plan(str(config.input), str(config.output_path))
    send, receive = anyio.create_memory_object_stream[Row](256)
    async with anyio.create_task_group() as tg:
        tg.start_soon(source.feed, send, anyio.Event())
        async with receive:
            async for row in receive:
                plan.note(row)
    plan.rows_done = stats.skipped
    return plan


def write_plan(path: Path, plan: Plan) -> None:
    path.write_text(json.dumps(plan.as_record(), indent=2) + "\n", encoding="utf-8")


def project(sample: RunSummary, rows_left: int) -> dict[str, Any]:
    """The rest of the rows at the rate the sample's rows finished (its rows over its elapsed
    time: measured, where a rate inferred from the concurrency limit overstates a server that
    queues what it cannot run), and at its tokens a row."""
    labelled = sample.rows.ok + sample.rows.error
    tokens = sample.usage.get("input_tokens", 0) + sample.usage.get("output_tokens", 0)
    rows_per_s = labelled / sample.elapsed_s if labelled and sample.elapsed_s else 0.0
    hosts = (sample.by_host or {}).items()
    return {
        "rows_labelled": labelled,
        "rows_ok": sample.rows.ok,
        "tokens": tokens,
        "elapsed_s": sample.elapsed_s,
        "concurrency": {name: int(host.get("concurrency", 0)) for name, host in hosts},
        "rows_left": rows_left,
        "projected_rows_per_s": round(rows_per_s, 2),
        "projected_seconds": round(rows_left / rows_per_s, 1) if rows_per_s else None,
        "projected_tokens": round(tokens / labelled * rows_left) if labelled else None,
    }


def describe_sample(sample: dict[str, Any]) -> str:
    hosts = ", ".join(f"{name} at {n}" for name, n in sample["concurrency"].items())
    measured = (
        f"sample: {sample['rows_ok']} of {sample['rows_labelled']} rows ok, "
        f"{sample['tokens']} tokens, in {sample['elapsed_s']:.1f}s; concurrency found: "
        f"{hosts or 'none'}"
    )
    left, seconds = sample["rows_left"], sample["projected_seconds"]
    if not left:
        return f"{measured}\nno rows left to label"
    if seconds is None or sample["projected_tokens"] is None:
        return f"{measured}\nthe {left} rows left: no sample row finished to project them from"
    projected = (
        f"{measured}\nthe {left} rows left: about {seconds:.0f}s (at the sample's "
        f"{sample['projected_rows_per_s']} rows/s) and {sample['projected_tokens']} tokens"
    )
    limit = sum(sample["concurrency"].values())
    if sample["rows_labelled"] < limit:  # the run may keep more in flight than the sample could
        projected += (
            f"\n  (the sample had at most {sample['rows_labelled']} rows in flight, the run may "
            f"have {limit}: --sample {3 * limit} or more measures its pace better)"
        )
    return projected


def _done_ids(path: Path, codec: RecordCodec) -> IdSet:
    """The ids of `ok` rows in an earlier output, read only (run's resume also compacts)."""
    done = IdSet()
    if path.exists():
        collect_done(path, codec, done)
    return done


def _tokens(row: Row) -> int:
    assert row.request is not None
    chars = sum(
        len(m["content"]) for m in row.request.messages if isinstance(m.get("content"), str)
    )
    return -(-chars // CHARS_PER_TOKEN)
