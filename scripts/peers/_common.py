"""What the peer jobs share: the command line, the rows, the result type, the output lines.

Every peer job is run the same way by `scripts/bench_peers.py`:

    python scripts/peers/NAME_job.py IN.jsonl OUT.jsonl --host URL --model M --concurrency N

and writes one JSON line a row, `{"id", "output": {...}}` or `{"id", "error": "..."}`, exiting 0
when every row got an output. It prints `NAME: N rows in S s (R rows/s)` to stderr, timed from
reading the input to the last line written (interpreter start-up and imports excluded).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Literal

import anyio
from pydantic import BaseModel

Row = tuple[Any, str]  # (id, prompt)


# The result of every job: `bench.py`'s JSON Schema as a pydantic model. Its docstring is what
# pydantic-ai sends as the output tool's description.
class Label(BaseModel):
    """The sentiment of one review."""

    label: Literal["pos", "neg", "neutral"]


def parse_args(argv: Sequence[str] | None, description: str | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("input", type=Path, help="JSONL rows: {'id': ..., 'prompt': ...}")
    parser.add_argument("output", type=Path, help="JSONL results: {'id': ..., 'output': ...}")
    parser.add_argument("--host", required=True, help="the Ollama URL, without /v1")
    parser.add_argument("--model", required=True)
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    return args


def read_rows(path: Path) -> list[Row]:
    rows: list[Row] = []
    with path.open("rb") as source:
        for number, line in enumerate(source, start=1):
            if line.strip():
                data = json.loads(line)
                rows.append((data.get("id", number), data["prompt"]))
    return rows


class Results:
    """The output file, written a line at a time by one event loop; counts the failures."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.failed = 0

    def ok(self, row_id: Any, label: Label) -> None:
        self.out.write(json.dumps({"id": row_id, "output": label.model_dump()}) + "\n")

    def error(self, row_id: Any, exc: BaseException) -> None:
        self.failed += 1
        self.out.write(json.dumps({"id": row_id, "error": f"{type(exc).__name__}: {exc}"}) + "\n")


@contextmanager
def job(name: str, args: argparse.Namespace) -> Iterator[tuple[list[Row], Results]]:
    """Reads the rows, opens the output, and reports the time and the failures at the end."""
    started = time.perf_counter()
    rows = read_rows(args.input)
    with args.output.open("w", encoding="utf-8") as out:
        results = Results(out)
        yield rows, results
    elapsed = time.perf_counter() - started
    print(
        f"{name}: {len(rows)} rows in {elapsed:.3f} s ({len(rows) / elapsed:.2f} rows/s)",
        file=sys.stderr,
    )
    if results.failed:
        print(f"{results.failed} of {len(rows)} rows failed; see {args.output}", file=sys.stderr)


def exit_code(results: Results) -> int:
    return 1 if results.failed else 0


async def bounded(
    rows: Sequence[Row], concurrency: int, one: Callable[[Row], Awaitable[None]]
) -> None:
    """`one(row)` for every row, at most `concurrency` at a time, a task each: the loop a user
    writes around a library that has no batch call of its own (anyio, like `bare_loop.py`)."""
    slots = anyio.Semaphore(concurrency)

    async def run(row: Row) -> None:
        try:
            await one(row)
        finally:
            slots.release()

    async with anyio.create_task_group() as tg:
        for row in rows:
            await slots.acquire()  # before the task starts: never more than N tasks alive
            tg.start_soon(run, row)
