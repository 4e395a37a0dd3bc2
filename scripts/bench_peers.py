"""`python -m batch run` against its peers on the same job; prints a markdown table.

    python scripts/bench_peers.py [--rows N] [--concurrency N] [--latency S]

The job is `bench.py`'s: a JSON Schema label per row (`{"label": "pos"|"neg"|"neutral"}`), N
requests in flight, results to JSONL. Each peer does it as its own documentation shows, in a small
script under `scripts/peers/` (see the docstring of each):

- pydantic-ai: `Agent` on `OllamaProvider` (Ollama's OpenAI-compatible `/v1`), `output_type`;
- outlines: `from_ollama(ollama.AsyncClient)`, the pydantic model as the output type;
- LangChain: `ChatOllama.with_structured_output(...).abatch(max_concurrency=N)`.

One fake Ollama server in its own process on loopback (no latency by default: only the client
side's cost shows) serves all of them, one program after the other, on the same rows. Each program
runs as its own process, measured as in `bench.py` (wall time from start to exit, peak RSS from
`os.wait4`), and its output is checked: a row counts as ok only when its id is one of the input's
and its output conforms to the schema. A peer that is not installed (the `bench` extra) or fails
is reported in the table with the reason, not left out.

`bench.py` can add this as one more benchmark: `peers(suite)` appends its figures to a `Suite`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import jsonschema
from bench_harness import (
    DEFAULT_ROWS,
    MODEL,
    SCHEMA,
    SCRIPTS,
    BenchError,
    Figure,
    Measured,
    Suite,
    fake_ollama,
    measure,
    note,
    positive_int,
    print_header,
    rate,
    ratio,
    read_summary,
    run_main,
    suite_in_tempdir,
    tail,
)

PEERS_DIR = SCRIPTS / "peers"
INSTALL_HINT = "python -m pip install -e '.[bench]'"


@dataclass(frozen=True)
class Peer:
    name: str
    script: str
    modules: tuple[str, ...]  # what must be importable for the script to run
    distribution: str  # the package whose version the table shows
    how: str


PEERS = (
    Peer(
        "pydantic-ai",
        "pydantic_ai_job.py",
        ("pydantic_ai", "openai"),
        "pydantic-ai-slim",
        "`Agent(OpenAIChatModel(M, provider=OllamaProvider(HOST/v1)), output_type=Label)` "
        "(tool output), anyio semaphore",
    ),
    Peer(
        "outlines",
        "outlines_job.py",
        ("outlines",),
        "outlines",
        "`from_ollama(ollama.AsyncClient(HOST), M)(prompt, Label)`, anyio semaphore",
    ),
    Peer(
        "LangChain",
        "langchain_job.py",
        ("langchain_ollama",),
        "langchain-ollama",
        '`ChatOllama(...).with_structured_output(Label).abatch(config={"max_concurrency": N})`',
    ),
)


@dataclass(frozen=True)
class Outcome:
    """One program's run of the job; `problem` is empty when it did the whole job."""

    name: str
    version: str
    how: str
    measured: Measured | None
    rows_ok: int
    problem: str = ""
    own_rate: float | None = None  # rows/s by the program's own clock: start-up excluded


def version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def rows_ok(output: Path, rows: int) -> int:
    """Distinct input ids whose output line is ok and conforms to the schema."""
    validator = jsonschema.Draft202012Validator(SCHEMA)
    expected = set(range(1, rows + 1))  # the ids of Suite.input_file
    done: set[int] = set()
    try:
        source = output.open("rb")
    except FileNotFoundError:
        return 0
    with source:
        for line in source:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            ok = isinstance(row, dict) and row.get("status", "ok") == "ok" and "output" in row
            if ok and row.get("id") in expected and validator.is_valid(row["output"]):
                done.add(row["id"])
    return len(done)


def own_rate(name: str, output: Path, log: Path) -> float | None:
    """The rows/s a program reports for its own loop: batch's summary `throughput`, a peer
    job's `NAME: N rows in S s (R rows/s)` line."""
    if name == "batch":
        try:
            return float(read_summary(output)["throughput"]["rows_per_s"])
        except (BenchError, ValueError, KeyError):
            return None
    found = re.search(r": \d+ rows in [\d.]+ s \(([\d.]+) rows/s\)", tail(log))
    return float(found.group(1)) if found else None


def _outcome(suite: Suite, name: str, argv: list[str], output: Path, **about: str) -> Outcome:
    log = suite.log_file(f"peers-{name}")
    note(f"  {name}: {suite.rows} rows, concurrency {suite.concurrency}")
    measured = measure(argv, cwd=suite.workdir, env=suite.env, log=log)
    ok = rows_ok(output, suite.rows)
    problem = ""
    if measured.exit_code != 0 or ok != suite.rows:
        last = tail(log, 1).strip()
        problem = f"exit {measured.exit_code}, {ok:,} of {suite.rows:,} rows ok: {last}"
        note(f"  {name} did not do the whole job:\n{tail(log)}")
    return Outcome(
        name,
        measured=measured,
        rows_ok=ok,
        problem=problem,
        own_rate=own_rate(name, output, log),
        **about,
    )


def run_all(suite: Suite, latency: float = 0.0) -> list[Outcome]:
    """batch, then each peer, on the same rows against one fake server."""
    n, c = suite.rows, suite.concurrency
    source = suite.input_file(n)
    outcomes: list[Outcome] = []
    with fake_ollama(suite, "peers", latency=latency, slots=c) as url:
        output = suite.workdir / "peers-batch.jsonl"
        outcomes.append(
            _outcome(
                suite,
                "batch",
                suite.batch_command(source, output, url, c),
                output,
                version=version("batch"),
                how="`python -m batch run --schema schema.json --concurrency N`",
            )
        )
        for peer in PEERS:
            about = {"version": version(peer.distribution), "how": peer.how}
            missing = [m for m in peer.modules if importlib.util.find_spec(m) is None]
            if missing:
                problem = f"not installed ({', '.join(missing)}): {INSTALL_HINT}"
                note(f"  {peer.name}: {problem}")
                absent = Outcome(peer.name, about["version"], peer.how, None, 0, problem)
                outcomes.append(absent)
                continue
            output = suite.workdir / f"peers-{peer.script.removesuffix('.py')}.jsonl"
            argv = [
                sys.executable,
                str(PEERS_DIR / peer.script),
                str(source),
                str(output),
                "--host",
                url,
                "--model",
                MODEL,
                "--concurrency",
                str(c),
            ]
            outcomes.append(_outcome(suite, peer.name, argv, output, **about))
    if outcomes[0].problem:
        raise BenchError(f"peers: batch itself did not do the job: {outcomes[0].problem}")
    return outcomes


def figures(outcomes: Sequence[Outcome], rows: int, concurrency: int) -> list[Figure]:
    """`bench.py`'s table lines: batch's rows/s against each peer's (ratio > 1: batch ahead)."""
    batch, *peers = outcomes
    assert batch.measured is not None
    batch_rate = rows / batch.measured.wall_s
    value = (
        f"{rate(batch_rate)} ({batch.measured.wall_s:.2f} s, {batch.measured.peak_rss_mb:.0f} MB)"
    )
    out = []
    for peer in peers:
        measure_ = f"rows/s against {peer.name} {peer.version} ({rows:,} rows, c={concurrency})"
        if peer.measured is None or peer.problem:
            out.append(Figure("peers", measure_, value, f"{peer.name}: {peer.problem}", "n/a"))
            continue
        peer_rate = rows / peer.measured.wall_s
        reference = (
            f"{peer.name}: {rate(peer_rate)} ({peer.measured.wall_s:.2f} s, "
            f"{peer.measured.peak_rss_mb:.0f} MB)"
        )
        out.append(Figure("peers", measure_, value, reference, ratio(batch_rate, peer_rate)))
    return out


def peers(suite: Suite) -> None:
    """The `peers` benchmark for `bench.py`: adds one figure per peer to `suite.figures`."""
    suite.figures += figures(run_all(suite), suite.rows, suite.concurrency)


def table(outcomes: Sequence[Outcome], rows: int) -> str:
    batch = outcomes[0].measured
    assert batch is not None
    batch_rate = rows / batch.wall_s
    lines = [
        "| program | version | how it does the job | rows/s, wall time | batch is ahead by "
        "| rows/s, own clock | batch is ahead by | peak RSS | rows ok |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    batch_own = outcomes[0].own_rate
    for o in outcomes:
        if o.measured is None:
            lines.append(
                f"| {o.name} | {o.version} | {o.how} | n/a | n/a | n/a | n/a | n/a | {o.problem} |"
            )
            continue
        speed = rows / o.measured.wall_s
        own = rate(o.own_rate) if o.own_rate else "n/a"
        own_ratio = ratio(batch_own, o.own_rate) if batch_own and o.own_rate else "n/a"
        wall_ratio = ratio(batch_rate, speed)
        if o.problem:  # a partial job is no comparison
            wall_ratio = own_ratio = "n/a"
        ok = o.problem or f"{o.rows_ok:,} of {rows:,}"
        lines.append(
            f"| {o.name} | {o.version} | {o.how} | {rate(speed)} ({o.measured.wall_s:.2f} s) "
            f"| {wall_ratio} | {own} | {own_ratio} "
            f"| {o.measured.peak_rss_mb:.0f} MB | {ok} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--rows", type=positive_int, default=DEFAULT_ROWS, help=f"rows (default {DEFAULT_ROWS})"
    )
    parser.add_argument(
        "--concurrency", type=positive_int, default=8, help="requests in flight (default 8)"
    )
    parser.add_argument(
        "--latency", type=float, default=0.0, help="the fake's seconds a generation (default 0)"
    )
    args = parser.parse_args(argv)
    if args.latency < 0:
        parser.error("--latency must not be negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(lambda: _report(args))


def _report(args: argparse.Namespace) -> int:
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    with suite_in_tempdir("batch-bench-peers-", args.rows, args.concurrency, ()) as suite:
        outcomes = run_all(suite, args.latency)
    elapsed = time.perf_counter() - started
    print_header(
        "batch and its peers",
        load_before,
        f"the same {args.rows:,} rows, concurrency {args.concurrency}, one fake Ollama server "
        f"in its own process on loopback (latency {args.latency:g} s, {args.concurrency} slots); "
        "each program one run of its own process, wall time from start to exit (imports "
        "included); own clock: the program's own loop timer, from reading the input to the last "
        "line written (batch: the summary's `throughput`); peak RSS from `wait4`; rows ok: "
        "distinct ids whose output conforms to the schema",
    )
    print(table(outcomes, args.rows))
    print()
    print(f"Suite time: {elapsed:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
