"""A markdown section for a GitHub Actions job's summary page (`$GITHUB_STEP_SUMMARY`): what
`run` labelled and `eval` measured, where the people who read CI look."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def run_section(summary: Any, exit_code: int) -> str:
    rows, usage = summary.rows, summary.usage
    lines = [
        f"### batch run: `{summary.input}`",
        "",
        "| rows ok | rows failed | already done | input tokens | output tokens | elapsed | exit |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {rows.ok} | {rows.error} | {rows.skipped} | {usage.get('input_tokens', 0)} "
        f"| {usage.get('output_tokens', 0)} | {summary.elapsed_s:.1f} s | {exit_code} |",
    ]
    if summary.errors_by_type:
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(summary.errors_by_type.items()))
        lines += ["", f"Failures: {kinds} (see `{summary.errors_file or summary.output}`)."]
    for field, values in (summary.labels or {}).items():
        ranked = sorted(values.items(), key=lambda item: -item[1])
        lines += ["", f"Labels of `{field}`: " + ", ".join(f"{v} {n}" for v, n in ranked)]
    return "\n".join(lines) + "\n"


def eval_section(title: str, gates: Iterable[str], figures: Mapping[str, str], passed: bool) -> str:
    lines = [f"### batch eval: `{title}`", "", f"Gates: {'hold' if passed else '**failed**'}"]
    lines += [f"- {gate}" for gate in gates]
    lines += ["", "| field | figures |", "|---|---|"]
    lines += [f"| `{name}` | {text} |" for name, text in figures.items()]
    return "\n".join(lines) + "\n"


def append_section(path: Path, section: str) -> None:
    """Appends; a summary file that cannot be written is a warning, never the step's failure."""
    try:
        with path.open("a", encoding="utf-8") as file:
            file.write(section + "\n")
    except OSError as exc:
        log.warning("cannot append to GITHUB_STEP_SUMMARY %s: %s", path, exc.strerror or exc)


def append_run_section(path: Path, summary: Any, exit_code: int) -> None:
    append_section(path, run_section(summary, exit_code))
