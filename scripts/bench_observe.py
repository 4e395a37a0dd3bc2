"""What watching a run costs: `batch run` plain, against the same run with Prometheus metrics
(a textfile and a live /metrics) and OpenTelemetry (every span and metric sent over OTLP/HTTP
to a receiver on loopback), alternated, on the same rows against the fake at zero latency.

    python scripts/bench_observe.py [--rows N] [--concurrency N] [--rounds N]

Each run is its own process: rows/s by its own clock (the summary's throughput) and its CPU
time (user + system, from `wait4`) a row, start-up included. Prints a markdown table; nothing
here asserts a timing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bench_harness import (
    BenchError,
    Figure,
    Suite,
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
)

VARIANTS = ("plain", "watched")
# `--parts`: each exporter alone, to see where the cost is.
PARTS = ("metrics", "traces")


@contextmanager
def otlp_sink() -> Iterator[str]:
    """A receiver that takes every OTLP/HTTP export and answers 200 (an empty message)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def run_once(suite: Suite, variant: str, url: str, otlp: str, n: int) -> tuple[float, float]:
    """One run: rows/s by its own clock, and CPU seconds (user + system) of its process."""
    source = suite.input_file(n)
    output = suite.workdir / f"{variant}.out.jsonl"
    output.unlink(missing_ok=True)
    argv = suite.batch_command(source, output, url, suite.concurrency)
    env = dict(suite.env)
    if variant in ("watched", "metrics"):
        argv += ["--metrics-textfile", str(suite.workdir / "batch.prom")]
        argv += ["--metrics-port", "127.0.0.1:0"]
    if variant in ("watched", "traces"):
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp
    log = suite.log_file(variant)
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, cwd=suite.workdir, env=env, stdout=sink, stderr=sink)
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise BenchError(f"{variant}: batch exited {status}; see {log}")
    summary = read_summary(output)
    return float(summary["throughput"]["rows_per_s"]), usage.ru_utime + usage.ru_stime


def compare(
    suite: Suite, rounds: int, variants: Sequence[str], latency: float = 0.0
) -> list[Figure]:
    n = suite.rows
    rates: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    with (
        fake_ollama(suite, "observe", latency=latency, slots=suite.concurrency) as url,
        otlp_sink() as otlp,
    ):
        for round_ in range(rounds):
            order = variants if round_ % 2 == 0 else variants[::-1]  # alternated
            for variant in order:
                note(f"  round {round_ + 1}/{rounds}: {variant}, {n} rows")
                got_rate, got_cpu = run_once(suite, variant, url, otlp, n)
                rates[variant].append(got_rate)
                cpu[variant].append(got_cpu)
    what = f"{n:,} rows, c={suite.concurrency}, latency {latency:g} s, median of {rounds}"
    plain_rate = statistics.median(rates["plain"])
    plain_cpu = statistics.median(cpu["plain"]) * 1e6 / n
    figures = []
    for variant in variants[1:]:
        got_rate = statistics.median(rates[variant])
        got_cpu = statistics.median(cpu[variant]) * 1e6 / n
        figures += [
            Figure(
                "observe",
                f"rows/s, own clock ({what})",
                f"{variant}: {rate(got_rate)}",
                f"plain: {rate(plain_rate)}",
                ratio(got_rate, plain_rate),
            ),
            Figure(
                "observe",
                "CPU a row, start-up included (user + system)",
                f"{variant}: {got_cpu:,.0f} us",
                f"plain: {plain_cpu:,.0f} us",
                ratio(got_cpu, plain_cpu),
            ),
        ]
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=positive_int, default=2000)
    parser.add_argument("--concurrency", type=positive_int, default=8)
    parser.add_argument("--rounds", type=positive_int, default=5)
    parser.add_argument("--parts", action="store_true", help="also metrics alone, traces alone")
    parser.add_argument("--latency", type=float, default=0.0, help="the fake's seconds a reply")
    args = parser.parse_args(argv)
    return run_main(lambda: _report(args))


def _report(args: argparse.Namespace) -> int:
    load_before, started = os.getloadavg()[0], time.perf_counter()
    with suite_in_tempdir("batch-bench-observe-", args.rows, args.concurrency, ()) as suite:
        variants = (*VARIANTS, *PARTS) if args.parts else VARIANTS
        figures = compare(suite, args.rounds, variants, args.latency)
    print_header(
        "Watching a run",
        load_before,
        "watched: --metrics-textfile, --metrics-port and OTLP traces and metrics to a receiver "
        "on loopback; plain: none of them",
    )
    print(render(figures))
    print(f"\nTime: {time.perf_counter() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
