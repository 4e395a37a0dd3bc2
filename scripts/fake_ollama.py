"""Run the fake Ollama server as its own process, for benchmarks and manual runs.

    python scripts/fake_ollama.py --port 11434 --latency 0.05 --slots 8 --fault busy::3
    python scripts/fake_ollama.py --server-version 0.12.0 --no-context-shift --vision-model llava

It serves Ollama's OpenAI-compatible `/v1` routes too (fake_openai.py, beside this script), which
the peers in bench_peers.py talk to. Prints `listening on http://HOST:PORT` once it accepts
connections (with `--port 0`, the port the OS chose) and exits 0 on SIGTERM or SIGINT, writing
its counters to stderr as one JSON line (`counters {...}`: requests, queue_seconds,
busy_replies, max_in_flight) on the way out.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from functools import partial
from pathlib import Path
from typing import cast, get_args

import anyio

try:
    from batch.testing import FakeOllama, Fault, FaultKind
    from batch.testing.fake_ollama import CURRENT_VERSION, GO_RUNNER_VERSION
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from batch.testing import FakeOllama, Fault, FaultKind
    from batch.testing.fake_ollama import CURRENT_VERSION, GO_RUNNER_VERSION

import fake_openai  # beside this script: Python puts its directory first on sys.path


def parse_fault(spec: str) -> Fault:
    """`KIND[:MATCH[:TIMES]]`: an empty MATCH matches every request; TIMES is a count, or
    `forever` (also `*` or empty); it defaults to 1, as for `Fault`."""
    kind, _, rest = spec.partition(":")
    match, _, times = rest.partition(":")
    if kind not in get_args(FaultKind):
        raise argparse.ArgumentTypeError(
            f"unknown fault kind {kind!r}; one of: {', '.join(get_args(FaultKind))}"
        )
    count: int | None
    if ":" not in rest:
        count = 1
    elif times in ("", "*", "forever"):
        count = None
    else:
        try:
            count = int(times)
        except ValueError:
            message = f"TIMES must be a count or 'forever': {spec!r}"
            raise argparse.ArgumentTypeError(message) from None
        if count < 1:
            raise argparse.ArgumentTypeError(f"TIMES must be at least 1: {spec!r}")
    return Fault(cast(FaultKind, kind), match or None, count)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434, help="0 lets the OS choose")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per generation")
    parser.add_argument("--slots", type=int, default=4, help="parallel generations")
    parser.add_argument(
        "--max-queue", type=int, help="503 'server busy' past this many waiting (OLLAMA_MAX_QUEUE)"
    )
    parser.add_argument(
        "--model", action="append", dest="models", metavar="NAME", help="repeatable"
    )
    parser.add_argument("--context-length", type=int, default=4096)
    parser.add_argument(
        "--fault", action="append", type=parse_fault, default=[], metavar="KIND[:MATCH[:TIMES]]"
    )
    parser.add_argument(
        "--server-version",
        default=CURRENT_VERSION,
        help=f"the Ollama version to behave as (default {CURRENT_VERSION}; "
        f"{GO_RUNNER_VERSION}: the Go runners; before 0.12.6: no `truncate`)",
    )
    parser.add_argument(
        "--context-shift",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="cut an over-long prompt (off: a 400, as OLLAMA_CONTEXT_SHIFT=false)",
    )
    parser.add_argument(
        "--vision-model", action="append", dest="vision_models", default=[], metavar="NAME"
    )
    parser.add_argument(
        "--thinking-model", action="append", dest="thinking_models", default=[], metavar="NAME"
    )
    parser.add_argument(
        "--model-info",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="/api/show's model_info (off: as older servers and some models)",
    )
    parser.add_argument(
        "--check-host-header",
        action="store_true",
        help="403 with no body for a non-local Host header, as Ollama on loopback",
    )
    parser.add_argument(
        "--record",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="keep request bodies in memory (off: benchmarks send millions)",
    )
    return parser


def _announce(url: str) -> None:
    print(f"listening on {url}", flush=True)


async def _serve(fake: FakeOllama, host: str) -> None:
    # Install the signal handlers before announcing, so a parent that signals right after the
    # line still gets a clean exit.
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(fake.serve_forever, host, ready=_announce))
            async for _ in signals:
                tg.cancel_scope.cancel()
                break


def fake_from(args: argparse.Namespace) -> FakeOllama:
    """The fake server the parsed flags describe."""
    return FakeOllama(
        models=args.models or ("fake-model",),
        latency=args.latency,
        slots=args.slots,
        context_length=args.context_length,
        port=args.port,
        record_requests=args.record,
        max_queue=args.max_queue,
        version=args.server_version,
        context_shift=args.context_shift,
        vision_models=args.vision_models,
        thinking_models=args.thinking_models,
        model_info=args.model_info,
        check_host_header=args.check_host_header,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        fake = fake_from(args)
    except ValueError as exc:  # a value the fake refuses (`--slots 0`): one line, no traceback
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    fake_openai.mount(fake)
    for fault in args.fault:
        fake.add_fault(fault)
    anyio.run(_serve, fake, args.host)
    counters = {
        "requests": fake.request_count,
        "queue_seconds": round(fake.queue_seconds, 3),
        "busy_replies": fake.busy_replies,
        "max_in_flight": fake.max_in_flight,
    }
    print("counters", json.dumps(counters), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
