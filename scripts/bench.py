"""Benchmarks of `python -m batch run` against the fake Ollama server; prints a markdown table.

    python scripts/bench.py [--rows N] [--concurrency N] [--memory-rows N[,N...]] [--quick]
                            [--only NAME[,NAME...]]

- overhead:   rows/s of the worker (schema validation on) against `bare_loop.py`, the loop a user
              would write by hand, on the same rows and concurrency; the fake answers at once.
- efficiency: rows/s against the ideal of a server with 8 slots and 0.05 s a generation, at
              concurrency 8 and 10, and the bare loop at 8.
- memory:     peak RSS of the worker on inputs of growing size.
- resume:     a rerun where every row is already done (it must skip them all), and the start-up
              time of `python -m batch --help`.
- digests, dedup, reuse: resume with input digests checked, dedup's cost when nothing repeats,
              and a run of copies and a warm cache (`bench_reuse.py`).
- peers:      pydantic-ai, outlines and LangChain on the same job (`bench_peers.py`).
- embedded:   tokens/s of the embedded backend against llama.cpp called directly.

Each program runs as its own process (the fake server too); wall time runs from its start to its
exit, and peak RSS comes from `os.wait4` on that one process. Progress goes to stderr, the report
to stdout. Figures are from one run on this machine: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import select
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
FAKE_SERVER = SCRIPTS / "fake_ollama.py"
BARE_LOOP = SCRIPTS / "bare_loop.py"
MODEL = "fake-model"
SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": ["pos", "neg", "neutral"]}},
    "required": ["label"],
}
EFFICIENCY_SLOTS = 8
EFFICIENCY_LATENCY = 0.05
STARTUP_RUNS = 5
EMBEDDED_ROWS = 24
SERVER_READY_TIMEOUT = 30.0
SERVER_STOP_TIMEOUT = 10.0
PROMPTS = (
    "Review {i}: arrived two days early and works perfectly. Would buy again.",
    "Review {i}: the strap broke after a week and support never answered my emails.",
    "Review {i}: it does what the box says, nothing more, nothing less.",
    "Review {i}: battery lasts all day, but the screen scratches far too easily.",
)


@dataclass(frozen=True)
class Sizes:
    rows: int
    memory_rows: tuple[int, ...]

    def describe(self) -> str:
        return f"--rows {self.rows} --memory-rows {','.join(map(str, self.memory_rows))}"


DEFAULTS = Sizes(rows=2000, memory_rows=(10_000, 1_000_000))
QUICK = Sizes(rows=200, memory_rows=(1000, 5000))


class BenchError(Exception):
    """A benchmark could not run or a program did not do its job; the message says which."""


@dataclass(frozen=True)
class Measured:
    """One program, start to exit."""

    wall_s: float
    peak_rss_kib: int
    exit_code: int

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss_kib * 1024 / 1e6


@dataclass(frozen=True)
class Figure:
    """One line of the report."""

    benchmark: str
    measure: str
    value: str
    reference: str = ""
    ratio: str = ""


@dataclass(frozen=True)
class FullRun:
    """A complete run of the worker whose output a later benchmark can reuse."""

    rows: int
    command: list[str]
    output: Path
    summary: Path
    measured: Measured


@dataclass
class Suite:
    workdir: Path
    rows: int
    concurrency: int
    memory_rows: tuple[int, ...]
    env: dict[str, str]
    schema: Path
    figures: list[Figure] = field(default_factory=list)
    largest_run: FullRun | None = None

    def input_file(self, rows: int) -> Path:
        """A JSONL input of `rows` rows, written once and shared by the benchmarks."""
        path = self.workdir / f"rows-{rows}.jsonl"
        if not path.exists():
            with path.open("w", encoding="utf-8") as out:
                for i in range(1, rows + 1):
                    prompt = PROMPTS[i % len(PROMPTS)].format(i=i)
                    out.write(json.dumps({"id": i, "prompt": prompt}) + "\n")
        return path

    def log_file(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def batch_command(self, source: Path, output: Path, url: str, concurrency: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "batch",
            "run",
            str(source),
            "--output",
            str(output),
            "--summary",
            str(summary_path(output)),
            "--model",
            MODEL,
            "--host",
            url,
            "--concurrency",
            str(concurrency),
            "--schema",
            str(self.schema),
            "--quiet",
        ]

    def run(self, name: str, argv: list[str]) -> Measured:
        """Runs `argv` to its end, measured; raises `BenchError` unless it exits 0."""
        log = self.log_file(name)
        measured = measure(argv, cwd=self.workdir, env=self.env, log=log)
        if measured.exit_code != 0:
            raise BenchError(
                f"{name}: `{shlex.join(argv)}` exited {measured.exit_code}\n{tail(log)}"
            )
        return measured


# ---- processes -----------------------------------------------------------------------------------


def measure(argv: Sequence[str], *, cwd: Path, env: dict[str, str], log: Path) -> Measured:
    """Runs `argv` with stdout and stderr to `log`: its wall time, and the peak RSS of that
    process alone (`wait4` on its pid; RUSAGE_CHILDREN would mix in every child so far)."""
    with log.open("wb") as sink:
        started = time.perf_counter()
        process = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink
        )
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
        wall = time.perf_counter() - started
    # Reaped by wait4: tell the Popen object, so that it never waits for the pid again.
    process.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    peak = usage.ru_maxrss // 1024 if sys.platform == "darwin" else usage.ru_maxrss
    return Measured(wall, peak, process.returncode)


@contextmanager
def fake_ollama(
    suite: Suite,
    name: str,
    *,
    latency: float,
    slots: int,
    max_queue: int | None = None,
    counters: dict[str, Any] | None = None,
) -> Iterator[str]:
    """The fake Ollama server in its own process on loopback; yields its URL. Stopped with
    SIGTERM (then SIGKILL if it lingers) when the block ends, however it ends; then `counters`,
    if given, gets what the server counted (requests, queue_seconds, busy_replies, ...)."""
    argv = [
        sys.executable,
        str(FAKE_SERVER),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--latency",
        str(latency),
        "--slots",
        str(slots),
        "--model",
        MODEL,
        "--no-record",
        *(["--max-queue", str(max_queue)] if max_queue is not None else []),
    ]
    log = suite.log_file(f"{name}-server")
    with log.open("wb") as sink:
        server = subprocess.Popen(
            argv,
            cwd=suite.workdir,
            env=suite.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=sink,
        )
    try:
        url = _announced_url(server, log)
        note(f"  fake server at {url} (latency {latency:g}s, {slots} slots)")
        yield url
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=SERVER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            note("  fake server ignored SIGTERM: killing it")
            server.kill()
            code = server.wait()
        if server.stdout is not None:
            server.stdout.close()
        said = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
        if counters is not None and (found := re.search(r"^counters (.*)$", said, re.M)):
            counters.update(json.loads(found.group(1)))
        if code not in (0, -signal.SIGTERM):
            note(f"  fake server exited {code}:\n{tail(log)}")


def _announced_url(server: subprocess.Popen[bytes], log: Path) -> str:
    """Waits for the server's `listening on URL` line."""
    assert server.stdout is not None
    fd = server.stdout.fileno()
    deadline = time.monotonic() + SERVER_READY_TIMEOUT
    received = b""
    while b"\n" not in received:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"the fake server did not start within {SERVER_READY_TIMEOUT:g}s")
        readable, _, _ = select.select([fd], [], [], left)
        if readable:
            chunk = os.read(fd, 4096)
            if not chunk:
                server.wait()
                raise BenchError(
                    f"the fake server exited ({server.returncode}) before listening:\n{tail(log)}"
                )
            received += chunk
    line = received.split(b"\n", 1)[0].decode(errors="replace").strip()
    prefix = "listening on "
    if not line.startswith(prefix):
        raise BenchError(f"the fake server said {line!r}, not 'listening on URL'")
    return line.removeprefix(prefix)


def child_env() -> dict[str, str]:
    """This environment minus the worker's own settings (flags decide everything), with the
    checkout importable so that the package measured is the one beside this script."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCH_", "OLLAMA_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


# ---- helpers -------------------------------------------------------------------------------------


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return "(no output)"
    return "\n".join(text.splitlines()[-lines:]) or "(no output)"


def summary_path(output: Path) -> Path:
    return output.with_name(output.name.removesuffix(".jsonl") + ".summary.json")


def read_summary(output: Path) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads(summary_path(output).read_text(encoding="utf-8"))
    return summary


def count_lines(path: Path) -> int:
    with path.open("rb") as source:
        return sum(1 for _ in source)


def rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}x" if reference else "n/a"


def check_complete(name: str, summary: dict[str, Any], rows: int) -> None:
    if summary["rows"]["ok"] != rows:
        raise BenchError(f"{name}: {summary['rows']} where {rows} rows should all be ok")


# ---- benchmarks ----------------------------------------------------------------------------------


def bench_overhead(suite: Suite) -> None:
    n, c = suite.rows, suite.concurrency
    source = suite.input_file(n)
    bare_out = suite.workdir / "overhead-bare.jsonl"
    batch_out = suite.workdir / "overhead-batch.jsonl"
    with fake_ollama(suite, "overhead", latency=0.0, slots=c) as url:
        bare_argv = [
            sys.executable,
            str(BARE_LOOP),
            str(source),
            str(bare_out),
            "--host",
            url,
            "--model",
            MODEL,
            "--concurrency",
            str(c),
            "--schema",
            str(suite.schema),
        ]
        note(f"  bare loop: {n} rows, concurrency {c}")
        bare = suite.run("overhead-bare", bare_argv)
        note(f"  batch: {n} rows, concurrency {c}")
        batch = suite.run("overhead-batch", suite.batch_command(source, batch_out, url, c))
    if (written := count_lines(bare_out)) != n:
        raise BenchError(f"overhead: the bare loop wrote {written} lines for {n} rows")
    summary = read_summary(batch_out)
    check_complete("overhead", summary, n)
    bare_loop_rate = _bare_loop_rate(suite.log_file("overhead-bare"))

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
            f"bare loop: {rate(bare_loop_rate)}" if bare_loop_rate else "bare loop: n/a",
            ratio(batch_loop, bare_loop_rate or 0.0),
        ),
        Figure(
            name,
            "peak RSS",
            f"{batch.peak_rss_mb:.1f} MB",
            f"bare loop: {bare.peak_rss_mb:.1f} MB",
            ratio(batch.peak_rss_mb, bare.peak_rss_mb),
        ),
    ]


def _bare_loop_rate(log: Path) -> float | None:
    """The rows/s the bare loop reports for its own loop (start-up excluded), if it did."""
    found = re.search(r"bare loop: \d+ rows in [\d.]+ s \(([\d.]+) rows/s\)", tail(log))
    return float(found.group(1)) if found else None


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
        argv = [sys.executable, str(BARE_LOOP), str(source), str(bare_output), "--host", url]
        argv += ["--model", MODEL, "--concurrency", str(c), "--schema", str(suite.schema)]
        bare = suite.run("efficiency-bare", argv)
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


def bench_auto(suite: Suite) -> None:
    from bench_auto import compare  # a grid of its own: scripts/bench_auto.py

    suite.figures += compare(suite)


def bench_embedded(suite: Suite) -> None:
    from bench_embedded import compare  # needs the embedded extra; imported only when run

    note(f"  llama.cpp directly, then batch with 1 and 2 contexts: {EMBEDDED_ROWS} rows each")
    speeds = compare(EMBEDDED_ROWS, [1, 2])
    direct = speeds[0]
    for speed in speeds[1:]:
        suite.figures.append(
            Figure(
                "embedded",
                f"tokens/s, {speed.run}, {EMBEDDED_ROWS} sample-job rows",
                f"{speed.tokens_per_s:.1f} ({speed.tokens} tokens in {speed.seconds:.1f} s)",
                f"llama.cpp directly: {direct.tokens_per_s:.1f}",
                ratio(speed.tokens_per_s, direct.tokens_per_s),
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


def _reuse_benchmarks(name: str) -> Callable[[Suite], None]:
    def run(suite: Suite) -> None:
        # Late, as bench_peers: bench_reuse imports this file again as the module `bench`.
        import bench
        import bench_reuse

        try:
            if name == "digests":
                bench_reuse.bench_resume_digests(suite, max(suite.memory_rows))
            elif name == "dedup":
                bench_reuse.bench_dedup(suite)
            else:
                bench_reuse.bench_reuse(suite, bench_reuse.REUSE_ROWS)
        except bench.BenchError as exc:
            raise BenchError(str(exc)) from None

    return run


def bench_peers(suite: Suite) -> None:
    # Late: bench_peers imports this file again as the module `bench`, whose BenchError is
    # another class than this script's when it runs as __main__.
    import bench
    import bench_peers

    try:
        bench_peers.peers(suite)
    except bench.BenchError as exc:
        raise BenchError(str(exc)) from None


BENCHMARKS: dict[str, Callable[[Suite], None]] = {
    "overhead": bench_overhead,
    "efficiency": bench_efficiency,
    "memory": bench_memory,
    "resume": bench_resume,
    "digests": _reuse_benchmarks("digests"),
    "dedup": _reuse_benchmarks("dedup"),
    "reuse": _reuse_benchmarks("reuse"),
    "peers": bench_peers,
    "embedded": bench_embedded,
    "auto": bench_auto,
}


# ---- the command ---------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text.replace("_", ""))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


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


def render(figures: Sequence[Figure]) -> str:
    header = ("benchmark", "measure", "value", "reference", "ratio")
    body = [(f.benchmark, f.measure, f.value, f.reference, f.ratio) for f in figures]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in body)])


@contextmanager
def suite_in_tempdir(
    prefix: str, rows: int, concurrency: int, memory_rows: tuple[int, ...]
) -> Iterator[Suite]:
    """A suite working in a temporary directory, removed with everything in it at the end."""
    with tempfile.TemporaryDirectory(prefix=prefix) as workdir:
        schema = Path(workdir) / "schema.json"
        schema.write_text(json.dumps(SCHEMA), encoding="utf-8")
        yield Suite(
            workdir=Path(workdir),
            rows=rows,
            concurrency=concurrency,
            memory_rows=memory_rows,
            env=child_env(),
            schema=schema,
        )


def print_header(title: str, load_before: float, setting: str) -> None:
    """The top of a report: what ran, where, and how busy the machine was."""
    print(f"## {title}\n")
    print(f"- command: `{shlex.join(sys.orig_argv)}`")
    print(
        f"- machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs; "
        f"Python {platform.python_version()}"
    )
    print(
        f"- load average (1 min) {load_before:.2f} before, {os.getloadavg()[0]:.2f} after: "
        "figures from a busy machine run low"
    )
    print(f"- {setting}")
    print()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = args.only or list(BENCHMARKS)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    with suite_in_tempdir("batch-bench-", args.rows, args.concurrency, args.memory_rows) as suite:
        try:
            for name in chosen:
                note(f"{name} ...")
                BENCHMARKS[name](suite)
        except BenchError as exc:
            note(f"benchmark failed: {exc}")
            return 1
        except KeyboardInterrupt:
            note("interrupted")
            return 130
    elapsed = time.perf_counter() - started
    print_header(
        "Benchmarks",
        load_before,
        "fake Ollama server in its own process on loopback; each figure is one run of one "
        "process, wall time from start to exit, peak RSS from `wait4`",
    )
    print(render(suite.figures))
    print()
    print(f"Suite time: {elapsed:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
