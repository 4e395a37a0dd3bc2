"""The benchmark job done with outlines, as its documentation shows for Ollama.

    python scripts/peers/outlines_job.py IN.jsonl OUT.jsonl --host URL --model M --concurrency N

`outlines.from_ollama(ollama.AsyncClient(host), model)`, called with the prompt and `Label` as the
output type (sent as Ollama's `format`); the JSON text it returns is parsed with
`Label.model_validate_json`. Rows run on an anyio semaphore of N (`_common.bounded`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import anyio
import ollama
import outlines
from _common import Label, Results, Row, bounded, exit_code, job, parse_args


async def label_rows(rows: list[Row], results: Results, host: str, model: str, n: int) -> None:
    generator = outlines.from_ollama(ollama.AsyncClient(host=host), model)

    async def one(row: Row) -> None:
        row_id, prompt = row
        try:
            text = await generator(prompt, Label)
            label = Label.model_validate_json(text)
        except Exception as exc:  # a failed row is an output line, as in the other jobs
            results.error(row_id, exc)
        else:
            results.ok(row_id, label)

    await bounded(rows, n, one)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv, __doc__.splitlines()[0] if __doc__ else None)
    with job("outlines", args) as (rows, results):
        anyio.run(label_rows, rows, results, args.host, args.model, args.concurrency)
    return exit_code(results)


if __name__ == "__main__":
    sys.exit(main())
