"""The baseline for `scripts/bench.py`: the loop a careful user would write by hand.

    python scripts/bare_loop.py IN.jsonl OUT.jsonl --host URL --model M --concurrency N
        [--schema file.json]

One `ollama.AsyncClient` with a connection per slot, N worker tasks fed through a bounded
memory object stream (so memory does not grow with the file beyond the rows read up front), and
one writer task that owns the output. No retries, no validation, no resume: one JSON line
`{"id", "content"}` per row (or `{"id", "error"}` when the request failed). Exit 0 when every
row got an answer, 1 otherwise. Prints `bare loop: N rows in S s (R rows/s)` to stderr, timed
from reading the input to the last line written (interpreter start-up excluded).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import IO, Any

import anyio
import httpx
import ollama
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

Prompt = tuple[Any, str]  # (id, prompt)
Result = dict[str, Any]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("input", type=Path, help="JSONL rows: {'id': ..., 'prompt': ...}")
    parser.add_argument("output", type=Path, help="JSONL results: {'id': ..., 'content': ...}")
    parser.add_argument("--host", required=True, help="Ollama URL")
    parser.add_argument("--model", required=True)
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    parser.add_argument("--schema", type=Path, help="a JSON Schema file, sent as `format`")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    return args


def read_rows(path: Path) -> list[Prompt]:
    """The whole input, as most hand-written loops read it."""
    rows: list[Prompt] = []
    with path.open("rb") as source:
        for number, line in enumerate(source, start=1):
            if line.strip():
                data = json.loads(line)
                rows.append((data.get("id", number), data["prompt"]))
    return rows


async def run(
    rows: list[Prompt],
    out: IO[str],
    *,
    host: str,
    model: str,
    concurrency: int,
    schema: dict[str, Any] | None,
    request_timeout: float,
) -> int:
    """Labels `rows`, writing one line each to `out`; returns how many failed."""
    client = ollama.AsyncClient(
        host,
        timeout=httpx.Timeout(request_timeout, connect=min(request_timeout, 10.0)),
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
    )
    rows_send, rows_receive = anyio.create_memory_object_stream[Prompt](concurrency)
    results_send, results_receive = anyio.create_memory_object_stream[Result](concurrency)
    failed = 0

    async def feed() -> None:
        async with rows_send:
            for row in rows:
                await rows_send.send(row)

    async def work(
        todo: MemoryObjectReceiveStream[Prompt], done: MemoryObjectSendStream[Result]
    ) -> None:
        async with todo, done:
            async for row_id, prompt in todo:
                try:
                    response = await client.chat(
                        model,
                        messages=[{"role": "user", "content": prompt}],
                        format=schema,
                        options={"temperature": 0},
                    )
                except (ollama.ResponseError, httpx.HTTPError) as exc:
                    await done.send({"id": row_id, "error": f"{type(exc).__name__}: {exc}"})
                else:
                    await done.send({"id": row_id, "content": response.message.content})

    async def write() -> None:
        nonlocal failed
        async with results_receive:
            async for result in results_receive:
                failed += "error" in result
                # `out` is a buffered file: this appends to memory, a flush now and then.
                out.write(json.dumps(result, ensure_ascii=False) + "\n")

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(write)
            tg.start_soon(feed)
            async with rows_receive, results_send:
                for _ in range(concurrency):
                    tg.start_soon(work, rows_receive.clone(), results_send.clone())
    finally:
        with anyio.CancelScope(shield=True):
            await client.close()  # type: ignore[no-untyped-call]
    return failed


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    schema = json.loads(args.schema.read_text(encoding="utf-8")) if args.schema else None
    started = time.perf_counter()  # the loop's own clock: interpreter start-up excluded
    rows = read_rows(args.input)
    # Opened here, outside the event loop; the writer task is its only user.
    with args.output.open("w", encoding="utf-8") as out:
        failed = anyio.run(
            partial(
                run,
                rows,
                out,
                host=args.host,
                model=args.model,
                concurrency=args.concurrency,
                schema=schema,
                request_timeout=args.timeout,
            )
        )
    elapsed = time.perf_counter() - started
    print(
        f"bare loop: {len(rows)} rows in {elapsed:.3f} s ({len(rows) / elapsed:.2f} rows/s)",
        file=sys.stderr,
    )
    if failed:
        print(f"{failed} of {len(rows)} rows failed; see {args.output}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
