"""Benchmarks of issue 13 (also sections of `bench.py`): resume with input digests checked,
the cost of dedup when nothing repeats, and a run of duplicates and a warm cache.

- resume_digests: a rerun of N done rows (the done output written directly, as the worker
  writes it, digests included, so no labelling is needed first): rows skipped per second and
  peak RSS, against the same rerun of 10,000 rows.
- dedup: `bench.py`'s overhead run (no row repeats) with dedup on (the default) and with
  `--no-dedup`, alternated twice; the best of each.
- reuse: 100,000 rows, 30 % of them copies of other rows, and a cache warmed (by another file
  with other ids) with half of the distinct requests: requests sent, rows/s and RSS.

    python scripts/bench_reuse.py [--only NAME[,NAME...]] [--resume-rows N] [--reuse-rows N]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench_harness import (
    DEFAULT_ROWS,
    MODEL,
    PROMPTS,
    ROOT,
    BenchError,
    Figure,
    Suite,
    check_complete,
    fake_ollama,
    note,
    rate,
    ratio,
    read_summary,
    render,
    run_main,
    suite_in_tempdir,
)

DIGEST_REFERENCE_ROWS = 10_000
REUSE_ROWS = 100_000


def synthesized_done(suite: Suite, rows: int) -> tuple[Path, Path]:
    """An input of `rows` rows and an output where each is done, as the worker writes them."""
    sys.path.insert(0, str(ROOT))
    from batch.core.digest import input_digest
    from batch.core.schema import load_schema
    from batch.run.config import JobConfig
    from batch.sink.records import encode_line

    source = suite.input_file(rows)
    # Flat settings, as `python -m batch run` gets them; JobConfig sorts them into its groups.
    flat: dict[str, Any] = {"input": source, "model": MODEL, "schema_ref": str(suite.schema)}
    config = JobConfig(**flat)
    fingerprint = config.fingerprint(load_schema(str(suite.schema)))
    output = suite.workdir / f"done-{rows}.jsonl"
    with source.open("rb") as lines, output.open("wb") as out:
        for number, raw in enumerate(lines, start=1):
            record = {
                "id": number,
                "line": number,
                "status": "ok",
                "output": {"label": "pos"},
                "attempts": 1,
                "usage": {"requests": 1, "input_tokens": 20, "output_tokens": 4},
                "model": MODEL,
                "host": "http://127.0.0.1:1",
                "done_reason": "stop",
                "elapsed_s": 0.01,
                "config": fingerprint,
                "input_digest": input_digest(raw),
            }
            out.write(encode_line(record))
    return source, output


def bench_resume_digests(suite: Suite, rows: int) -> None:
    results = []
    for n in sorted({DIGEST_REFERENCE_ROWS, rows}):
        source, output = synthesized_done(suite, n)
        note(f"  batch rerun: {n:,} rows done, digests checked")
        command = suite.batch_command(source, output, "http://127.0.0.1:9", suite.concurrency)
        measured = suite.run(f"resume-digests-{n}", command)
        summary = read_summary(output)["rows"]
        if summary["skipped"] != n or summary["ok"] or summary["changed"]:
            raise BenchError(f"resume: the rerun should skip all {n} rows, not {summary}")
        results.append((n, measured))
    (small_n, small), (n, big) = results[0], results[-1]
    suite.figures += [
        Figure(
            "resume",
            f"rows skipped/s, rerun of {n:,} done rows, input digests checked, process wall time",
            f"{rate(n / big.wall_s)} ({big.wall_s:.2f} s)",
            "target: 120,000",
            ratio(n / big.wall_s, 120_000),
        ),
        Figure(
            "resume",
            f"peak RSS, rerun of {n:,} done rows",
            f"{big.peak_rss_mb:.1f} MB",
            f"rerun of {small_n:,}: {small.peak_rss_mb:.1f} MB",
            ratio(big.peak_rss_mb, small.peak_rss_mb),
        ),
    ]


def bench_dedup(suite: Suite) -> None:
    n, c = suite.rows, suite.concurrency
    source = suite.input_file(n)  # every prompt differs: dedup finds nothing
    best: dict[str, float] = {}
    with fake_ollama(suite, "dedup", latency=0.0, slots=c) as url:
        for turn in range(2):
            for name, extra in (("on", []), ("off", ["--no-dedup"])):
                output = suite.workdir / f"dedup-{name}-{turn}.jsonl"
                output.unlink(missing_ok=True)
                command = [*suite.batch_command(source, output, url, c), *extra]
                note(f"  batch, dedup {name}: {n} rows, concurrency {c}")
                measured = suite.run(f"dedup-{name}-{turn}", command)
                check_complete("dedup", read_summary(output), n)
                best[name] = max(best.get(name, 0.0), n / measured.wall_s)
    suite.figures.append(
        Figure(
            "dedup",
            f"rows/s, process wall time, no row repeats ({n:,} rows, c={c}; best of 2)",
            f"dedup on: {rate(best['on'])}",
            f"--no-dedup: {rate(best['off'])}",
            ratio(best["on"], best["off"]),
        )
    )


def reuse_inputs(suite: Suite, rows: int) -> tuple[Path, Path, int]:
    """The measured input (30 % copies) and the file that warms the cache with half of its
    distinct prompts, under other ids; and the number of distinct prompts."""
    distinct = rows - rows * 3 // 10
    prompts = [PROMPTS[i % len(PROMPTS)].format(i=i) for i in range(distinct)]
    shuffle = random.Random(13)
    picks = prompts + [shuffle.choice(prompts) for _ in range(rows - distinct)]
    shuffle.shuffle(picks)
    source = suite.workdir / f"reuse-{rows}.jsonl"
    source.write_text(
        "".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(picks))
    )
    warm = suite.workdir / f"warm-{rows}.jsonl"
    half = prompts[: distinct // 2]
    warm.write_text(
        "".join(json.dumps({"id": f"w{i}", "prompt": p}) + "\n" for i, p in enumerate(half))
    )
    return source, warm, distinct


def bench_reuse(suite: Suite, rows: int) -> None:
    source, warm, distinct = reuse_inputs(suite, rows)
    cache = suite.workdir / "reuse-cache.sqlite"
    c = suite.concurrency
    with fake_ollama(suite, "reuse", latency=0.0, slots=c) as url:
        note(f"  warming the cache: {distinct // 2:,} rows of another file")
        warm_out = suite.workdir / "warm.out.jsonl"
        suite.run(
            "reuse-warm", [*suite.batch_command(warm, warm_out, url, c), "--cache", str(cache)]
        )
        output = suite.workdir / "reuse.out.jsonl"
        note(f"  batch: {rows:,} rows, 30 % copies, cache warm for half the rest")
        measured = suite.run(
            "reuse", [*suite.batch_command(source, output, url, c), "--cache", str(cache)]
        )
    summary = read_summary(output)
    check_complete("reuse", summary, rows)
    sent, saved = summary["usage"]["requests"], summary["requests_saved"]
    suite.figures.append(
        Figure(
            "reuse",
            f"{rows:,} rows, 30 % copies, cache warm for half the rest (c={c}): requests sent",
            f"{sent:,} ({saved['duplicates']:,} copies, {saved['cache']:,} from the cache)",
            f"rows: {rows:,}",
            ratio(sent, rows),
        )
    )
    suite.figures.append(
        Figure(
            "reuse",
            "rows/s, process wall time; peak RSS",
            f"{rate(rows / measured.wall_s)} ({measured.wall_s:.1f} s); "
            f"{measured.peak_rss_mb:.1f} MB",
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="resume_digests,dedup,reuse")
    parser.add_argument("--resume-rows", type=int, default=1_000_000)
    parser.add_argument("--reuse-rows", type=int, default=REUSE_ROWS)
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    args = parser.parse_args(argv)
    return run_main(lambda: _report(args))


def _report(args: argparse.Namespace) -> int:
    with suite_in_tempdir("batch-bench-reuse-", args.rows, 8, (args.resume_rows,)) as suite:
        for name in args.only.split(","):
            note(f"{name} ...")
            if name == "resume_digests":
                bench_resume_digests(suite, args.resume_rows)
            elif name == "dedup":
                bench_dedup(suite)
            elif name == "reuse":
                bench_reuse(suite, args.reuse_rows)
    print(render(suite.figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
