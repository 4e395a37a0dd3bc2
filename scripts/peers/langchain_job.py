"""The benchmark job done with LangChain, as its documentation shows for Ollama.

    python scripts/peers/langchain_job.py IN.jsonl OUT.jsonl --host URL --model M --concurrency N

`ChatOllama(model=M, base_url=HOST).with_structured_output(Label)` (the default `json_schema`
method: the schema goes to Ollama's `format`, the reply is parsed into `Label`), run over every
row with `abatch(prompts, config={"max_concurrency": N}, return_exceptions=True)`: LangChain's
own bounded batch call, so no loop of ours.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import anyio
from _common import Label, Results, Row, exit_code, job, parse_args
from langchain_ollama import ChatOllama


async def label_rows(rows: list[Row], results: Results, host: str, model: str, n: int) -> None:
    structured = ChatOllama(model=model, base_url=host).with_structured_output(Label)
    outputs = await structured.abatch(
        [prompt for _, prompt in rows], config={"max_concurrency": n}, return_exceptions=True
    )
    for (row_id, _), output in zip(rows, outputs, strict=True):
        if isinstance(output, Label):
            results.ok(row_id, output)
        else:
            error = output if isinstance(output, BaseException) else TypeError(repr(output))
            results.error(row_id, error)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv, __doc__.splitlines()[0] if __doc__ else None)
    with job("langchain", args) as (rows, results):
        anyio.run(label_rows, rows, results, args.host, args.model, args.concurrency)
    return exit_code(results)


if __name__ == "__main__":
    sys.exit(main())
