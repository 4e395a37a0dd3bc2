"""`--concurrency auto` against the fake Ollama server, whose slot count the worker is not told.

    python scripts/bench_auto.py [--seconds 60] [--slots 1,4,8,16] [--latency 0.05,0.5]
        [--variants auto,queue,fixed,fixed+2,bare]

For each S slots and L seconds a reply, rows = min(3,000, what S/L rows/s label in --seconds):

- `auto`: `--concurrency auto` (the default). Rows/s by the worker's own clock (the summary's
  `throughput`, start-up excluded) against the ideal S/L, the time-averaged number of requests
  waiting in the server's queue (the fake's summed wait for a slot over the run's time), and
  where the limit settled.
- `queue`: the same with a queue limit at the server: 503 "server busy" past S+2 waiting, as
  OLLAMA_MAX_QUEUE (or a cloud proxy) answers. Every row must end ok.
- `fixed`, `fixed+2`: `--concurrency S` and `S+2`, as a user who knows the slots would set it.
- `bare`: the bare `ollama.AsyncClient` loop (scripts/bare_loop.py) at S+2; rows/s by its timer.

Also `python scripts/bench.py --only auto` (the defaults). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench_harness import (
    Figure,
    Suite,
    bare_loop_rate,
    check_complete,
    fake_ollama,
    note,
    print_header,
    rate,
    ratio,
    read_summary,
    render,
    run_main,
    suite_in_tempdir,
)

SLOTS = (1, 4, 8, 16)
LATENCIES = (0.05, 0.5)
VARIANTS = ("auto", "queue", "fixed", "fixed+2", "bare")
MAX_ROWS = 3000
QUEUE_ROOM = 2  # the server answers 503 past S+2 waiting


def compare(
    suite: Suite,
    seconds: float = 60.0,
    slots: Sequence[int] = SLOTS,
    latencies: Sequence[float] = LATENCIES,
    variants: Sequence[str] = VARIANTS,
) -> list[Figure]:
    figures: list[Figure] = []
    for latency in latencies:
        for s in slots:
            for variant in variants:
                figures.append(_one(suite, variant, s, latency, seconds))
    return figures


def auto(suite: Suite) -> None:
    """The `auto` benchmark for `bench.py`: the default grid's figures added to `suite.figures`."""
    suite.figures += compare(suite)


def _one(suite: Suite, variant: str, slots: int, latency: float, seconds: float) -> Figure:
    ideal = slots / latency
    rows = min(MAX_ROWS, max(1, int(ideal * seconds)))
    source = suite.input_file(rows)
    name = f"auto-{variant}-s{slots}-l{latency:g}"
    output = suite.workdir / f"{name}.jsonl"
    counters: dict[str, Any] = {}
    max_queue = slots + QUEUE_ROOM if variant == "queue" else None
    note(f"  {name}: {rows} rows")
    with fake_ollama(
        suite, name, latency=latency, slots=slots, max_queue=max_queue, counters=counters
    ) as url:
        if variant == "bare":
            argv = suite.bare_loop_command(source, output, url, slots + 2)
            measured = suite.run(name, argv)
        else:
            c = {"fixed": str(slots), "fixed+2": str(slots + 2)}.get(variant, "auto")
            argv = suite.batch_command(source, output, url, 0)
            argv[argv.index("--concurrency") + 1] = c
            measured = suite.run(name, argv)
    setting = f"S={slots}, L={latency:g}s, {rows:,} rows"
    reference = f"ideal S/L: {rate(ideal)}"
    if variant == "bare":
        achieved = bare_loop_rate(suite.log_file(name)) or rows / measured.wall_s
        return Figure(
            "auto",
            f"bare loop c=S+2 ({setting})",
            rate(achieved),
            reference,
            ratio(achieved, ideal),
        )
    summary = read_summary(output)
    check_complete(name, summary, rows)
    achieved = float(summary["throughput"]["rows_per_s"])
    waiting = counters.get("queue_seconds", 0.0) / max(float(summary["elapsed_s"]), 1e-9)
    host: dict[str, Any] = next(iter((summary.get("by_host") or {}).values()), {})
    label = {"fixed": "c=S", "fixed+2": "c=S+2", "queue": "auto, 503 past S+2 waiting"}
    value = f"{rate(achieved)}; queue {waiting:.2f}"
    if variant in ("auto", "queue"):
        settled = host.get("settled_concurrency")
        value += f"; settled {settled}, max {counters.get('max_in_flight')}"
        value += f"; 503s {counters.get('busy_replies', 0)}" if variant == "queue" else ""
    return Figure(
        "auto",
        f"{label.get(variant, 'auto')} ({setting}), own clock",
        value,
        reference,
        ratio(achieved, ideal),
    )


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(part) for part in text.split(",") if part.strip())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=60.0, help="run length at the ideal")
    parser.add_argument("--slots", type=_ints, default=SLOTS, metavar="S[,S...]")
    parser.add_argument("--latency", type=_floats, default=LATENCIES, metavar="L[,L...]")
    parser.add_argument(
        "--variants", type=lambda t: tuple(t.split(",")), default=VARIANTS, metavar="V[,V...]"
    )
    args = parser.parse_args(argv)
    return run_main(lambda: _report(args))


def _report(args: argparse.Namespace) -> int:
    load_before, started = os.getloadavg()[0], time.perf_counter()
    with suite_in_tempdir("batch-bench-auto-", 0, 0, ()) as suite:
        figures = compare(suite, args.seconds, args.slots, args.latency, args.variants)
    print_header(
        "Concurrency auto",
        load_before,
        "fake Ollama server in its own process on loopback, slots not told to the worker; "
        "queue: requests waiting for a slot, time-averaged over the run",
    )
    print(render(figures))
    print(f"\nTime: {time.perf_counter() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
