"""Benchmarks of `python -m batch run` against the fake Ollama server; prints a markdown table.

    python scripts/bench.py [--rows N] [--concurrency N] [--memory-rows N[,N...]] [--quick]
                            [--cpu-runs N] [--only NAME[,NAME...]]

- overhead:   rows/s of the worker (schema validation on) against `bare_loop.py`, the loop a user
              would write by hand, on the same rows and concurrency; the fake answers at once.
- cpu:        CPU time per row (user + system, start-up included) of the worker, of the worker on
              httpx's own transport (BATCH_HTTP=httpx) and of the bare loop, the same rows against
              the fake at no latency, `--cpu-runs` rounds with the three alternated.
- efficiency: rows/s against the ideal of a server with 8 slots and 0.05 s a generation, at
              concurrency 8 and 10, and the bare loop at 8.
- memory:     peak RSS of the worker on inputs of growing size.
- resume:     a rerun where every row is already done (it must skip them all), and the start-up
              time of `python -m batch --help`.
- digests, dedup, reuse: resume with input digests checked, dedup's cost when nothing repeats,
              and a run of copies and a warm cache (`bench_reuse.py`).
- peers:      pydantic-ai, outlines and LangChain on the same job (`bench_peers.py`).
- embedded:   tokens/s of the embedded backend against llama.cpp called directly
              (`bench_embedded.py`).
- auto:       `--concurrency auto` against fakes of several slots and latencies (`bench_auto.py`).
- panel:      a one-member panel (`--panel MODEL`) against the plain run, alternated pairs.

Each program runs as its own process (the fake server too); wall time runs from its start to its
exit, and peak RSS comes from `os.wait4` on that one process. Progress goes to stderr, the report
to stdout. Figures are from one run on this machine: nothing here asserts a timing. A benchmark
that fails ends the suite with `benchmark failed: REASON` on stderr, exit 1, and no report.

This file is only the suite's entry point: nothing imports it. What the benchmarks share (the
suite, the measured process, the fake server, the report) is in `bench_harness.py`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import bench_auto
import bench_embedded
import bench_peers
import bench_reuse
from bench_harness import (
    DEFAULT_ROWS,
    BenchError,
    Figure,
    FullRun,
    Measured,
    Suite,
    bare_loop_rate,
    check_complete,
    count_lines,
    fake_ollama,
    note,
    positive_int,
    print_header,
    rate,
    ratio,
    read_summary,
    render,
    run_main,
    suite_in_tempdir,
    summary_path,
)

EFFICIENCY_SLOTS = 8
EFFICIENCY_LATENCY = 0.05
STARTUP_RUNS = 5
PANEL_PAIRS = 8


@dataclass(frozen=True)
class Sizes:
    rows: int
    memory_rows: tuple[int, ...]

    def describe(self) -> str:
        return f"--rows {self.rows} --memory-rows {','.join(map(str, self.memory_rows))}"


DEFAULTS = Sizes(rows=DEFAULT_ROWS, memory_rows=(10_000, 1_000_000))
QUICK = Sizes(rows=200, memory_rows=(1000, 5000))


# ---- benchmarks ----------------------------------------------------------------------------------


def bench_overhead(suite: Suite) -> None:
    n, c = suite.rows, suite.concurrency
    source = suite.input_file(n)
    bare_out = suite.workdir / "overhead-bare.jsonl"
    batch_out = suite.workdir / "overhead-batch.jsonl"
    with fake_ollama(suite, "overhead", latency=0.0, slots=c) as url:
        note(f"  bare loop: {n} rows, concurrency {c}")
        bare = suite.run("overhead-bare", suite.bare_loop_command(source, bare_out, url, c))
        note(f"  batch: {n} rows, concurrency {c}")
        batch = suite.run("overhead-batch", suite.batch_command(source, batch_out, url, c))
    if (written := count_lines(bare_out)) != n:
        raise BenchError(f"overhead: the bare loop wrote {written} lines for {n} rows")
    summary = read_summary(batch_out)
    check_complete("overhead", summary, n)
    bare_own = bare_loop_rate(suite.log_file("overhead-bare"))

    bare_wall, batch_wall = n / bare.wall_s, n / batch.wall_s
    batch_loop = float(summary["throughput"]["rows_per_s"])
    name = "overhead"
    what = f"{n:,} rows, c={c}, latency 0, schema on"
    suite.figures += [
        Figure(
            name,
            f"rows/s, process wall time ({what})",
            f"{rate(batch_wall)} ({batch.wall_s:.2f} s)",
            f"bare loop: {rate(bare_wall)} ({bare.wall_s:.2f} s)",
            ratio(batch_wall, bare_wall),
        ),
        Figure(
            name,
            "rows/s, own clock, start-up excluded (summary `throughput`; bare loop's timer)",
            rate(batch_loop),
            f"bare loop: {rate(bare_own)}" if bare_own else "bare loop: n/a",
            ratio(batch_loop, bare_own or 0.0),
        ),
        Figure(
            name,
            "peak RSS",
            f"{batch.peak_rss_mb:.1f} MB",
            f"bare loop: {bare.peak_rss_mb:.1f} MB",
            ratio(batch.peak_rss_mb, bare.peak_rss_mb),
        ),
    ]


def bench_cpu(suite: Suite) -> None:
    """What a row costs the client's machine: on a fast server that is what limits a run."""
    n, c = suite.rows, suite.concurrency
    source = suite.input_file(n)
    # name, its environment over the suite's (None: the bare loop)
    programs: dict[str, dict[str, str] | None] = {
        "bare loop": None,
        "batch": {},
        "batch, BATCH_HTTP=httpx": {"BATCH_HTTP": "httpx"},
    }
    per_row: dict[str, list[float]] = {name: [] for name in programs}
    with fake_ollama(suite, "cpu", latency=0.0, slots=c) as url:
        for i in range(suite.cpu_runs):
            for j, (name, env) in enumerate(programs.items()):
                output = suite.workdir / f"cpu-{i}-{j}.jsonl"
                command = (
                    suite.bare_loop_command(source, output, url, c)
                    if env is None
                    else suite.batch_command(source, output, url, c)
                )
                note(f"  {name}: {n} rows, concurrency {c} (round {i + 1} of {suite.cpu_runs})")
                measured = suite.run(f"cpu-{i}-{j}", command, env)
                if (written := count_lines(output)) != n:
                    raise BenchError(f"cpu: {name} wrote {written} lines for {n} rows")
                per_row[name].append(measured.cpu_s / n * 1e6)
    bare = statistics.median(per_row["bare loop"])
    what = f"{n:,} rows, c={c}, latency 0, median of {suite.cpu_runs} alternated"

    def shown(values: list[float]) -> str:
        return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"

    for name in ("batch", "batch, BATCH_HTTP=httpx"):
        suite.figures.append(
            Figure(
                "cpu",
                f"CPU us per row, user+system, start-up included: {name} ({what})",
                shown(per_row[name]),
                f"bare loop: {shown(per_row['bare loop'])}",
                ratio(statistics.median(per_row[name]), bare),
            )
        )


def bench_efficiency(suite: Suite) -> None:
    # At concurrency = slots, every slot idles for a round trip between two requests (the
    # worker's and the server's work on a reply and the next request); Ollama queues requests
    # beyond its slots, so two more in flight keep a queue at the server and the slots busy.
    n = suite.rows
    source = suite.input_file(n)
    ideal = EFFICIENCY_SLOTS / EFFICIENCY_LATENCY
    reference = f"ideal: {rate(ideal)} ({n / ideal:.2f} s)"
    with fake_ollama(
        suite, "efficiency", latency=EFFICIENCY_LATENCY, slots=EFFICIENCY_SLOTS
    ) as url:
        for c in (EFFICIENCY_SLOTS, EFFICIENCY_SLOTS + 2):
            output = suite.workdir / f"efficiency-{c}.jsonl"
            note(f"  batch: {n} rows, concurrency {c}")
            measured = suite.run(f"efficiency-{c}", suite.batch_command(source, output, url, c))
            summary = read_summary(output)
            check_complete("efficiency", summary, n)
            achieved = n / measured.wall_s
            steady = float(summary["throughput"]["rows_per_s"])
            setting = (
                f"{n:,} rows, c={c}, {EFFICIENCY_SLOTS} slots, latency {EFFICIENCY_LATENCY:g} s"
            )
            suite.figures += [
                Figure(
                    "efficiency",
                    f"rows/s, process wall time ({setting})",
                    f"{rate(achieved)} ({measured.wall_s:.2f} s)",
                    reference,
                    ratio(achieved, ideal),
                ),
                Figure(
                    "efficiency",
                    f"rows/s, own clock, start-up excluded (c={c})",
                    f"{rate(steady)} ({summary['elapsed_s']:.2f} s)",
                    reference,
                    ratio(steady, ideal),
                ),
            ]
        bare_output = suite.workdir / "efficiency-bare.jsonl"
        c = EFFICIENCY_SLOTS
        note(f"  bare loop: {n} rows, concurrency {c}")
        bare = suite.run("efficiency-bare", suite.bare_loop_command(source, bare_output, url, c))
    achieved = n / bare.wall_s
    suite.figures.append(
        Figure(
            "efficiency",
            f"bare loop at c={c}: rows/s, process wall time",
            f"{rate(achieved)} ({bare.wall_s:.2f} s)",
            reference,
            ratio(achieved, ideal),
        )
    )


def bench_memory(suite: Suite) -> None:
    sizes = sorted(set(suite.memory_rows))
    runs: list[tuple[int, Measured]] = []
    with fake_ollama(suite, "memory", latency=0.0, slots=suite.concurrency) as url:
        for n in sizes:
            runs.append((n, _full_run(suite, n, url).measured))
    smallest_n, smallest = runs[0]
    for n, measured in runs:
        reference = f"{smallest_n:,} rows: {smallest.peak_rss_mb:.1f} MB"
        suite.figures.append(
            Figure(
                "memory",
                f"peak RSS, {n:,} rows (c={suite.concurrency}, "
                f"{n / measured.wall_s:,.0f} rows/s in {measured.wall_s:.1f} s)",
                f"{measured.peak_rss_mb:.1f} MB",
                reference if n != smallest_n else "",
                ratio(measured.peak_rss_mb, smallest.peak_rss_mb),
            )
        )


def _full_run(suite: Suite, rows: int, url: str) -> FullRun:
    """Labels `rows` rows from scratch; the largest such run is kept for `resume`."""
    source = suite.input_file(rows)
    output = suite.workdir / f"full-{rows}.jsonl"
    command = suite.batch_command(source, output, url, suite.concurrency)
    note(f"  batch: {rows:,} rows, concurrency {suite.concurrency}")
    measured = suite.run(f"full-{rows}", command)
    check_complete(f"full run of {rows} rows", read_summary(output), rows)
    run = FullRun(rows, command, output, summary_path(output), measured)
    if suite.largest_run is None or rows >= suite.largest_run.rows:
        suite.largest_run = run
    return run


def bench_resume(suite: Suite) -> None:
    with fake_ollama(suite, "resume", latency=0.0, slots=suite.concurrency) as url:
        full = suite.largest_run
        if full is None:  # `--only resume`: label the rows first
            full = _full_run(suite, max(suite.memory_rows), url)
        # Same command, pointed at this server: the host is not part of what shapes a label,
        # so the rerun still finds every row done.
        command = list(full.command)
        command[command.index("--host") + 1] = url
        note(f"  batch rerun: {full.rows:,} rows already done")
        rerun = suite.run("resume", command)
    rows = read_summary(full.output)["rows"]
    if rows["skipped"] != full.rows or rows["ok"] or rows["error"]:
        raise BenchError(f"resume: the rerun should skip all {full.rows} rows, not {rows}")
    full_rate = full.rows / full.measured.wall_s
    skip_rate = full.rows / rerun.wall_s
    suite.figures.append(
        Figure(
            "resume",
            f"rows skipped/s, rerun of {full.rows:,} done rows, process wall time",
            f"{rate(skip_rate)} ({rerun.wall_s:.2f} s, {rerun.peak_rss_mb:.1f} MB)",
            f"labelling them: {rate(full_rate)} ({full.measured.wall_s:.1f} s)",
            ratio(skip_rate, full_rate),
        )
    )

    def median_wall(name: str, argv: list[str]) -> float:
        return statistics.median(suite.run(f"{name}-{i}", argv).wall_s for i in range(STARTUP_RUNS))

    note(f"  start-up: `python -m batch --help` and `python -c pass`, {STARTUP_RUNS} runs each")
    help_s = median_wall("startup-help", [sys.executable, "-m", "batch", "--help"])
    bare_s = median_wall("startup-python", [sys.executable, "-c", "pass"])
    suite.figures.append(
        Figure(
            "resume",
            f"start-up, `python -m batch --help`, median of {STARTUP_RUNS}",
            f"{help_s * 1000:.0f} ms",
            f"`python -c pass`: {bare_s * 1000:.0f} ms",
            ratio(help_s, bare_s),
        )
    )


def bench_panel(suite: Suite) -> None:
    """A one-member panel (`--panel MODEL`: votes recorded, a consensus of one) against the
    plain run of the same model, in pairs alternated so that a busy machine weighs on both.
    CPU seconds a run are the steadier figure where other work shares the cores."""
    n, c = suite.rows, suite.concurrency
    source = suite.input_file(n)
    figures: dict[str, dict[str, list[float]]] = {
        what: {"plain": [], "panel": []} for what in ("wall", "clock", "cpu")
    }
    with fake_ollama(suite, "panel", latency=0.0, slots=c) as url:
        for pair in range(PANEL_PAIRS):
            # Each kind goes first in every other pair: the second run of a pair was measured
            # slower, whichever it was (the fake server's state), so the order must not tell.
            for kind in ("plain", "panel") if pair % 2 == 0 else ("panel", "plain"):
                output = suite.workdir / f"panel-{kind}-{pair}.jsonl"
                command = suite.batch_command(source, output, url, c)
                if kind == "panel":
                    command[command.index("--model")] = "--panel"
                note(f"  {kind} run {pair + 1} of {PANEL_PAIRS}: {n} rows, concurrency {c}")
                measured = suite.run(f"panel-{kind}-{pair}", command)
                summary = read_summary(output)
                check_complete(f"panel ({kind})", summary, n)
                figures["wall"][kind].append(n / measured.wall_s)
                figures["clock"][kind].append(float(summary["throughput"]["rows_per_s"]))
                figures["cpu"][kind].append(measured.cpu_s)
    measures = {
        "wall": "rows/s, process wall time",
        "clock": "rows/s, own clock",
        "cpu": "CPU seconds (user + system) a run",
    }
    for what, measure in measures.items():
        panel = statistics.median(figures[what]["panel"])
        plain = statistics.median(figures[what]["plain"])
        shown = f"{panel:.2f} s" if what == "cpu" else rate(panel)
        reference = f"{plain:.2f} s" if what == "cpu" else rate(plain)
        suite.figures.append(
            Figure(
                "panel",
                f"{measure}, one-member panel, median of {PANEL_PAIRS} alternated pairs "
                f"({n:,} rows, c={c})",
                shown,
                f"plain run: {reference}",
                ratio(panel, plain),
            )
        )


def _digests(suite: Suite) -> None:
    bench_reuse.bench_resume_digests(suite, max(suite.memory_rows))


def _reuse(suite: Suite) -> None:
    bench_reuse.bench_reuse(suite, bench_reuse.REUSE_ROWS)


BENCHMARKS: dict[str, Callable[[Suite], None]] = {
    "overhead": bench_overhead,
    "cpu": bench_cpu,
    "efficiency": bench_efficiency,
    "memory": bench_memory,
    "resume": bench_resume,
    "digests": _digests,
    "dedup": bench_reuse.bench_dedup,
    "reuse": _reuse,
    "peers": bench_peers.peers,
    "embedded": bench_embedded.embedded,
    "auto": bench_auto.auto,
    "panel": bench_panel,
}


# ---- the command ---------------------------------------------------------------------------------


def sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(positive_int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N[,N...], not {text!r}") from None


def names(text: str) -> list[str]:
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(BENCHMARKS)}, not {text!r}")
    return chosen


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark `python -m batch run` against the fake Ollama server."
    )
    parser.add_argument(
        "--rows", type=positive_int, help="rows for overhead and efficiency (default 2000)"
    )
    parser.add_argument(
        "--concurrency", type=positive_int, default=8, help="requests in flight (default 8)"
    )
    parser.add_argument(
        "--cpu-runs",
        type=positive_int,
        default=3,
        help="rounds of the cpu benchmark, its programs alternated (default 3)",
    )
    parser.add_argument(
        "--memory-rows",
        type=sizes,
        metavar="N[,N...]",
        help="input sizes for the memory benchmark (default 10000,1000000)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"small sizes for a smoke run ({QUICK.describe()}); explicit sizes win",
    )
    parser.add_argument(
        "--only",
        type=names,
        metavar="NAME[,NAME...]",
        help=f"run only these benchmarks, of: {', '.join(BENCHMARKS)}",
    )
    args = parser.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    if args.rows is None:
        args.rows = base.rows
    if not args.memory_rows:
        args.memory_rows = base.memory_rows
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(lambda: run_suite(args))


def run_suite(args: argparse.Namespace) -> int:
    """The chosen benchmarks one after the other, then the report; `BenchError` if one fails."""
    chosen = args.only or list(BENCHMARKS)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    with suite_in_tempdir(
        "batch-bench-", args.rows, args.concurrency, args.memory_rows, args.cpu_runs
    ) as suite:
        for name in chosen:
            note(f"{name} ...")
            BENCHMARKS[name](suite)
    elapsed = time.perf_counter() - started
    print_header(
        "Benchmarks",
        load_before,
        "fake Ollama server in its own process on loopback; each figure is one run of one "
        "process (`cpu`: the median of its rounds), wall time from start to exit, peak RSS and "
        "CPU time from `wait4`",
    )
    print(render(suite.figures))
    print()
    print(f"Suite time: {elapsed:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
