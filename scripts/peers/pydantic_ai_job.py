"""The benchmark job done with pydantic-ai, as its documentation shows for Ollama.

    python scripts/peers/pydantic_ai_job.py IN.jsonl OUT.jsonl --host URL --model M --concurrency N

An `Agent` on `OpenAIChatModel` with `OllamaProvider(base_url=HOST/v1)` (pydantic-ai reaches
Ollama through its OpenAI-compatible API) and `output_type=Label`: the default tool output mode,
where the model answers by calling a `final_result` tool whose arguments pydantic-ai validates.
Rows run on an anyio semaphore of N (`_common.bounded`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import anyio
from _common import Label, Results, Row, bounded, exit_code, job, parse_args
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.ollama import OllamaProvider


async def label_rows(rows: list[Row], results: Results, host: str, model: str, n: int) -> None:
    ollama_model = OpenAIChatModel(model, provider=OllamaProvider(base_url=f"{host}/v1"))
    agent = Agent(ollama_model, output_type=Label)

    async def one(row: Row) -> None:
        row_id, prompt = row
        try:
            result = await agent.run(prompt)
        except Exception as exc:  # a failed row is an output line, as in the other jobs
            results.error(row_id, exc)
        else:
            results.ok(row_id, result.output)

    await bounded(rows, n, one)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv, __doc__.splitlines()[0] if __doc__ else None)
    with job("pydantic-ai", args) as (rows, results):
        anyio.run(label_rows, rows, results, args.host, args.model, args.concurrency)
    return exit_code(results)


if __name__ == "__main__":
    sys.exit(main())
