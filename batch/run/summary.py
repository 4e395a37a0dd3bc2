"""Run counters, the summary file, and the few lines a person reads at the end."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from batch.core.errors import PromptTruncated
from batch.core.states import StopReason
from batch.core.stats import RunStats
from batch.labelling.budget import FLAGS
from batch.labelling.panel_tally import panel_lines
from batch.sink.label_watch import label_lines

PROMPT_TRUNCATED = PromptTruncated.kind


class RowCounts(BaseModel):
    total: int = 0
    ok: int = 0
    error: int = 0
    skipped: int = 0
    changed: int = 0
    not_in_input: int = 0
    pruned: int = 0


class RequestsSaved(BaseModel):
    """Rows labelled without a request of their own."""

    duplicates: int = 0  # copies of a row of this run with the same request (`same_as`)
    cache: int = 0  # taken from the --cache file (`cached`)


class Retries(BaseModel):
    total: int = 0
    by_cause: dict[str, int] = Field(default_factory=dict)


class Throughput(BaseModel):
    rows_per_s: float = 0.0
    output_tokens_per_s: float = 0.0


# Written only when they apply, so that a plain run's summary stays short.
OPTIONAL = frozenset(
    {
        "settings",
        "shard",
        "by_host",
        "fatal",
        "stopped_by",
        "left",
        "labels",
        "confidence",
        "review",
        "panel",
    }
)


class RunSummary(BaseModel):
    """What a finished (or stopped) run reports; also written as the summary JSON file, with
    these keys in this order."""

    input: str
    output: str
    errors_file: str | None = None
    config: str
    # The settings `config` stamps (run/config.py `shaping`; the schema as a digest): what a
    # refused rerun compares its own with.
    settings: dict[str, Any] | None = None
    model: str | None = None
    hosts: list[str] = Field(default_factory=list)
    rows: RowCounts = Field(default_factory=RowCounts)
    errors_by_type: dict[str, int] = Field(default_factory=dict)
    # Rows whose prompt filled the context (error type prompt_truncated): the server likely cut
    # them without a word, so they are counted apart from other failures.
    prompts_truncated: int = 0
    attempts: int = 0
    requests_saved: RequestsSaved = Field(default_factory=RequestsSaved)
    retries: Retries = Field(default_factory=Retries)
    usage: dict[str, int] = Field(default_factory=dict)
    started_at: str = ""
    elapsed_s: float = 0.0
    throughput: Throughput = Field(default_factory=Throughput)
    complete: bool = False
    # Label quality (sink/label_watch.py): each categorical field's values over the ok rows, rows
    # with a confidence (--logprobs), the rows sent for review (--review-below).
    labels: dict[str, dict[str, int]] | None = None
    confidence: dict[str, int] | None = None
    review: dict[str, Any] | None = None
    # A panel's (labelling/panel_tally.py): per member, unanimous rows, Fleiss' kappa.
    panel: dict[str, Any] | None = None
    warnings: list[str] = Field(default_factory=list)
    shard: str | None = None
    by_host: dict[str, dict[str, Any]] | None = None
    fatal: str | None = None
    stopped_by: StopReason | None = None
    # After a budget stop: the rows the next run would label, and what is left of each budget.
    left: dict[str, float | int] | None = None

    def as_record(self) -> dict[str, Any]:
        record = self.model_dump(mode="json")
        return {k: v for k, v in record.items() if k not in OPTIONAL or v is not None}


def build_summary(
    stats: RunStats,
    *,
    input_path: Path,
    output_path: Path,
    fingerprint: str,
    settings: dict[str, Any] | None = None,
    hosts: list[str],
    model: str | None,
    fatal: str | None,
    stopped_by: StopReason | None,
    errors_path: Path | None = None,
    host_report: dict[str, dict[str, Any]] | None = None,
    shard: str | None = None,
) -> RunSummary:
    elapsed = stats.elapsed_s
    processed = stats.ok + stats.error
    by_host = None
    if host_report is not None:
        by_host = {
            name: {
                "rows_ok": stats.host_ok[name],
                "rows_failed": stats.host_failed[name],
                **report,
            }
            for name, report in host_report.items()
        }
    return RunSummary(
        input=str(input_path),
        output=str(output_path),
        errors_file=str(errors_path) if errors_path else None,
        config=fingerprint,
        settings=settings,
        model=model,
        hosts=hosts,
        rows=RowCounts(
            total=stats.done,
            ok=stats.ok,
            error=stats.error,
            skipped=stats.skipped,
            changed=stats.changed,
            not_in_input=stats.not_in_input,
            pruned=stats.pruned,
        ),
        requests_saved=RequestsSaved(duplicates=stats.same_as, cache=stats.cached),
        errors_by_type=dict(stats.errors),
        prompts_truncated=stats.errors.get(PROMPT_TRUNCATED, 0),
        attempts=stats.attempts,
        retries=Retries(total=sum(stats.retries.values()), by_cause=dict(stats.retries)),
        usage=stats.usage.as_record(),
        started_at=stats.started_at,
        elapsed_s=round(elapsed, 3),
        throughput=Throughput(
            rows_per_s=round(processed / elapsed, 2) if elapsed else 0.0,
            output_tokens_per_s=round(stats.usage.output_tokens / elapsed, 2) if elapsed else 0.0,
        ),
        complete=fatal is None and stopped_by is None,
        shard=shard,
        by_host=by_host,
        fatal=fatal,
        stopped_by=stopped_by,
    )


def write_summary(path: Path, summary: RunSummary) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(path.name + ".tmp")
    try:
        scratch.write_text(json.dumps(summary.as_record(), indent=2) + "\n", encoding="utf-8")
        os.replace(scratch, path)
    finally:
        scratch.unlink(missing_ok=True)  # after a failure (a full disk): no half copy left


def _reuse_lines(summary: RunSummary) -> list[str]:
    rows, saved = summary.rows, summary.requests_saved
    lines = []
    if rows.changed:
        lines.append(f"{rows.changed} rows labelled again: their input changed since the last run")
    if rows.not_in_input:
        gone = f"{rows.pruned} pruned" if rows.pruned else "kept (--prune takes them out)"
        lines.append(f"{rows.not_in_input} rows of the output are no longer in the input: {gone}")
    if saved.duplicates or saved.cache:
        lines.append(
            f"requests saved: {saved.duplicates} duplicates of another row, "
            f"{saved.cache} from the cache"
        )
    return lines


def concurrency_text(host: dict[str, Any]) -> str:
    """`fixed at 4`, or `auto, settled at 17, now 18`."""
    if host.get("concurrency_mode") != "auto":
        return f"fixed at {host.get('concurrency')}"
    settled = host.get("settled_concurrency")
    where = f"settled at {settled}" if settled is not None else "not settled"
    return f"auto, {where}, now {host.get('concurrency')}"


def counts(summary: RunSummary) -> dict[str, Any]:
    """The figures of the `run_finished` event (`--log-format json`)."""
    return {
        "rows": summary.rows.model_dump(),
        "usage": summary.usage,
        "attempts": summary.attempts,
        "retries": summary.retries.total,
        "elapsed_s": summary.elapsed_s,
        "complete": summary.complete,
        "stopped_by": summary.stopped_by,
        "output": summary.output,
    }


def human_summary(summary: RunSummary, summary_path: Path) -> str:
    rows, usage = summary.rows, summary.usage
    lines = [
        f"{rows.ok} ok, {rows.error} failed, {rows.skipped} already done "
        f"of {rows.total} rows in {summary.elapsed_s:.1f}s "
        f"({summary.throughput.rows_per_s:.1f} rows/s)",
        f"tokens: {usage['input_tokens']} in, {usage['output_tokens']} out "
        f"over {usage['requests']} responses; {summary.retries.total} retries",
    ]
    lines.extend(_reuse_lines(summary))
    if summary.errors_by_type:
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(summary.errors_by_type.items()))
        where = summary.errors_file or summary.output
        lines.append(f'failures: {kinds}; see rows with "status": "error" in {where}')
    if truncated := summary.prompts_truncated:
        lines.append(
            f"{truncated} prompts filled the model's context (a server from 0.12.6 on refuses "
            "them, an older one cuts them): raise num_ctx or shorten them (see "
            "error.context_length in those rows)"
        )
    by_host = summary.by_host or {}
    for name, host in by_host.items() if len(by_host) > 1 else ():
        lacks = f", lacks {', '.join(host['lacks_models'])}" if host["lacks_models"] else ""
        lines.append(
            f"  {name}: {host['rows_ok']} ok, {host['rows_failed']} failed, "
            f"{host['failures']} failed requests, out of rotation {host['taken_out']}x, "
            f"{host['completed_per_s']:.1f} replies/s, concurrency {concurrency_text(host)}, "
            f"now {host['state']}{lacks}"
        )
    lines.extend(label_lines(summary.labels, summary.review, summary.rows.skipped))
    if summary.panel is not None:
        lines.extend(panel_lines(summary.panel))
    if len(by_host) == 1:
        lines.append(f"concurrency: {concurrency_text(next(iter(by_host.values())))}")
    if summary.stopped_by is not None and summary.stopped_by.is_budget:
        rows_left = (summary.left or {}).get("rows", "some")
        lines.append(
            f"stopped at a budget ({FLAGS[summary.stopped_by]}); {rows_left} rows left: "
            "run again to continue"
        )
    elif summary.stopped_by:
        lines.append(f"stopped by {summary.stopped_by}: run the same command again to resume")
    if summary.fatal:
        lines.append(f"stopped early: {summary.fatal}")
    lines.append(f"output: {summary.output}; summary: {summary_path}")
    return "\n".join(lines)
