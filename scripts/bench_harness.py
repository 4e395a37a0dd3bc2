"""What the benchmarks share: the suite, the measured process, the fake server, the report.

`bench.py` and every `bench_*.py` import this module; it imports none of them (nor `batch`), so
the scripts' imports run one way only:

    bench.py -> bench_auto, bench_embedded, bench_peers, bench_reuse -> bench_harness
    bench.py -> bench_harness;  bench_hosts.py -> bench_harness

- `BenchError`: a benchmark could not run, or a program did not do its job. `run_main` turns it
  (and anything else raised) into `benchmark failed: REASON` on stderr and exit 1, never a
  traceback; REASON ends with the last lines of the failing program's output, if one failed.
- `Suite`: the working directory, the sizes and the figures of one run of benchmarks; it writes
  the inputs, builds the commands and runs them measured (`measure`: wall time from start to
  exit; peak RSS and user+system CPU from `os.wait4` on that one pid).
- `fake_ollama`: `fake_ollama.py` in its own process on loopback, for one block.
- `render`, `print_header`: the markdown report, with the command line and the machine on top.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import select
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
FAKE_SERVER = SCRIPTS / "fake_ollama.py"
BARE_LOOP = SCRIPTS / "bare_loop.py"
MODEL = "fake-model"
SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": ["pos", "neg", "neutral"]}},
    "required": ["label"],
}
DEFAULT_ROWS = 2000
SERVER_READY_TIMEOUT = 30.0
SERVER_STOP_TIMEOUT = 10.0
PROMPTS = (
    "Review {i}: arrived two days early and works perfectly. Would buy again.",
    "Review {i}: the strap broke after a week and support never answered my emails.",
    "Review {i}: it does what the box says, nothing more, nothing less.",
    "Review {i}: battery lasts all day, but the screen scratches far too easily.",
)


class BenchError(Exception):
    """A benchmark could not run or a program did not do its job; the message says which."""


@dataclass(frozen=True)
class Measured:
    """One program, start to exit."""

    wall_s: float
    peak_rss_kib: int
    exit_code: int
    cpu_s: float = 0.0  # user and system time of the process: steadier than wall time on a
    # machine that other work keeps busy

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss_kib * 1024 / 1e6


@dataclass(frozen=True)
class Figure:
    """One line of the report."""

    benchmark: str
    measure: str
    value: str
    reference: str = ""
    ratio: str = ""


@dataclass(frozen=True)
class FullRun:
    """A complete run of the worker whose output a later benchmark can reuse."""

    rows: int
    command: list[str]
    output: Path
    summary: Path
    measured: Measured


@dataclass
class Suite:
    workdir: Path
    rows: int
    concurrency: int
    memory_rows: tuple[int, ...]
    env: dict[str, str]
    schema: Path
    cpu_runs: int = 3
    figures: list[Figure] = field(default_factory=list)
    largest_run: FullRun | None = None

    def input_file(self, rows: int) -> Path:
        """A JSONL input of `rows` rows, written once and shared by the benchmarks."""
        path = self.workdir / f"rows-{rows}.jsonl"
        if not path.exists():
            with path.open("w", encoding="utf-8") as out:
                for i in range(1, rows + 1):
                    prompt = PROMPTS[i % len(PROMPTS)].format(i=i)
                    out.write(json.dumps({"id": i, "prompt": prompt}) + "\n")
        return path

    def log_file(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def batch_command(self, source: Path, output: Path, url: str, concurrency: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "batch",
            "run",
            str(source),
            "--output",
            str(output),
            "--summary",
            str(summary_path(output)),
            "--model",
            MODEL,
            "--host",
            url,
            "--concurrency",
            str(concurrency),
            "--schema",
            str(self.schema),
            "--quiet",
        ]

    def bare_loop_command(
        self, source: Path, output: Path, url: str, concurrency: int
    ) -> list[str]:
        """`bare_loop.py` on the same job as `batch_command`."""
        argv = [sys.executable, str(BARE_LOOP), str(source), str(output), "--host", url]
        argv += ["--model", MODEL, "--concurrency", str(concurrency)]
        return [*argv, "--schema", str(self.schema)]

    def run(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Measured:
        """Runs `argv` to its end, measured, with `env` over the suite's environment; raises
        `BenchError` unless it exits 0."""
        log = self.log_file(name)
        measured = measure(argv, cwd=self.workdir, env={**self.env, **(env or {})}, log=log)
        if measured.exit_code != 0:
            raise BenchError(
                f"{name}: `{shlex.join(argv)}` exited {measured.exit_code}\n{tail(log)}"
            )
        return measured


# ---- processes -----------------------------------------------------------------------------------


def measure(argv: Sequence[str], *, cwd: Path, env: dict[str, str], log: Path) -> Measured:
    """Runs `argv` with stdout and stderr to `log`: its wall time, and the peak RSS and CPU time
    of that process alone (`wait4` on its pid; RUSAGE_CHILDREN would mix in every child so far)."""
    with log.open("wb") as sink:
        started = time.perf_counter()
        process = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink
        )
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
        wall = time.perf_counter() - started
    # Reaped by wait4: tell the Popen object, so that it never waits for the pid again.
    process.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    peak = usage.ru_maxrss // 1024 if sys.platform == "darwin" else usage.ru_maxrss
    return Measured(wall, peak, process.returncode, usage.ru_utime + usage.ru_stime)


@contextmanager
def fake_ollama(
    suite: Suite,
    name: str,
    *,
    latency: float,
    slots: int,
    max_queue: int | None = None,
    counters: dict[str, Any] | None = None,
) -> Iterator[str]:
    """The fake Ollama server in its own process on loopback; yields its URL. Stopped with
    SIGTERM (then SIGKILL if it lingers) when the block ends, however it ends; then `counters`,
    if given, gets what the server counted (requests, queue_seconds, busy_replies, ...)."""
    argv = [sys.executable, str(FAKE_SERVER), "--host", "127.0.0.1", "--port", "0"]
    argv += ["--latency", str(latency), "--slots", str(slots), "--model", MODEL, "--no-record"]
    argv += ["--max-queue", str(max_queue)] if max_queue is not None else []
    log = suite.log_file(f"{name}-server")
    with log.open("wb") as sink:
        server = subprocess.Popen(
            argv,
            cwd=suite.workdir,
            env=suite.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=sink,
        )
    listening = False
    try:
        url = _announced_url(server, log)
        listening = True
        note(f"  fake server at {url} (latency {latency:g}s, {slots} slots)")
        yield url
    finally:
        _stop_server(server, log, counters, listening=listening)


def _announced_url(server: subprocess.Popen[bytes], log: Path) -> str:
    """Waits for the server's `listening on URL` line."""
    assert server.stdout is not None
    fd = server.stdout.fileno()
    deadline = time.monotonic() + SERVER_READY_TIMEOUT
    received = b""
    while b"\n" not in received:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"the fake server did not start within {SERVER_READY_TIMEOUT:g}s")
        readable, _, _ = select.select([fd], [], [], left)
        if readable:
            chunk = os.read(fd, 4096)
            if not chunk:
                server.wait()
                raise BenchError(
                    f"the fake server exited ({server.returncode}) before listening:\n{tail(log)}"
                )
            received += chunk
    line = received.split(b"\n", 1)[0].decode(errors="replace").strip()
    prefix = "listening on "
    if not line.startswith(prefix):
        raise BenchError(f"the fake server said {line!r}, not 'listening on URL'")
    return line.removeprefix(prefix)


def _stop_server(
    server: subprocess.Popen[bytes], log: Path, counters: dict[str, Any] | None, *, listening: bool
) -> None:
    """SIGTERM, then SIGKILL if it lingers; reads the counters the server wrote on exit, and
    shows what it said if it failed once listening (before, `_announced_url`'s error has it)."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
    try:
        code = server.wait(timeout=SERVER_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        note("  fake server ignored SIGTERM: killing it")
        server.kill()
        code = server.wait()
    if server.stdout is not None:
        server.stdout.close()
    said = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
    if counters is not None and (found := re.search(r"^counters (.*)$", said, re.M)):
        counters.update(json.loads(found.group(1)))
    if listening and code not in (0, -signal.SIGTERM):
        note(f"  fake server exited {code}:\n{tail(log)}")


def child_env() -> dict[str, str]:
    """This environment minus the worker's own settings (flags decide everything), with the
    checkout importable so that the package measured is the one beside this script."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCH_", "OLLAMA_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


# ---- what the programs left ----------------------------------------------------------------------


def note(message: str) -> None:
    """Progress, to stderr: stdout is the report."""
    print(message, file=sys.stderr, flush=True)


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return "(no output)"
    return "\n".join(text.splitlines()[-lines:]) or "(no output)"


def summary_path(output: Path) -> Path:
    return output.with_name(output.name.removesuffix(".jsonl") + ".summary.json")


def read_summary(output: Path) -> dict[str, Any]:
    """The summary the worker wrote beside `output`; `BenchError` if there is none to read."""
    path = summary_path(output)
    try:
        summary: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BenchError(f"no readable summary {path.name}: {exc}") from None
    return summary


def count_lines(path: Path) -> int:
    """Lines in `path`; 0 if there is no such file."""
    try:
        with path.open("rb") as source:
            return sum(1 for _ in source)
    except FileNotFoundError:
        return 0


def check_complete(name: str, summary: dict[str, Any], rows: int) -> None:
    if summary["rows"]["ok"] != rows:
        raise BenchError(f"{name}: {summary['rows']} where {rows} rows should all be ok")


def bare_loop_rate(log: Path) -> float | None:
    """The rows/s the bare loop reports for its own loop (start-up excluded), if it did."""
    found = re.search(r"bare loop: \d+ rows in [\d.]+ s \(([\d.]+) rows/s\)", tail(log))
    return float(found.group(1)) if found else None


# ---- the report ----------------------------------------------------------------------------------


def rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}x" if reference else "n/a"


def render(figures: Sequence[Figure]) -> str:
    header = ("benchmark", "measure", "value", "reference", "ratio")
    body = [(f.benchmark, f.measure, f.value, f.reference, f.ratio) for f in figures]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in body)])


def machine(*, arch: bool = True) -> str:
    """The platform, its architecture (unless `arch` is false), the CPUs and Python."""
    where = f"{platform.platform()}, {platform.machine()}" if arch else platform.platform()
    return f"{where}, {os.cpu_count()} CPUs; Python {platform.python_version()}"


def print_header(title: str, load_before: float, setting: str) -> None:
    """The top of a report: what ran, where, and how busy the machine was."""
    print(f"## {title}\n")
    print(f"- command: `{shlex.join(sys.orig_argv)}`")
    print(f"- machine: {machine()}")
    print(
        f"- load average (1 min) {load_before:.2f} before, {os.getloadavg()[0]:.2f} after: "
        "figures from a busy machine run low"
    )
    print(f"- {setting}")
    print()


# ---- the commands --------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (`1_000` allowed)."""
    value = int(text.replace("_", ""))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


@contextmanager
def suite_in_tempdir(
    prefix: str, rows: int, concurrency: int, memory_rows: tuple[int, ...], cpu_runs: int = 3
) -> Iterator[Suite]:
    """A suite working in a temporary directory, removed with everything in it at the end."""
    with tempfile.TemporaryDirectory(prefix=prefix) as workdir:
        schema = Path(workdir) / "schema.json"
        schema.write_text(json.dumps(SCHEMA), encoding="utf-8")
        yield Suite(
            workdir=Path(workdir),
            rows=rows,
            concurrency=concurrency,
            memory_rows=memory_rows,
            env=child_env(),
            schema=schema,
            cpu_runs=cpu_runs,
        )


def run_main(body: Callable[[], int]) -> int:
    """A benchmark command's exit code: `body()`'s, or, when it fails, 1 after
    `benchmark failed: REASON` on stderr (130 and `interrupted` on Ctrl-C); never a traceback.
    A `BenchError`'s message is the reason; anything else is named with where it was raised."""
    try:
        return body()
    except BenchError as exc:
        note(f"benchmark failed: {exc}")
    except KeyboardInterrupt:
        note("interrupted")
        return 130
    except Exception as exc:  # a bug, or something missing: still one line, saying where
        note(f"benchmark failed: {_unexpected(exc)}")
    return 1


def _unexpected(exc: Exception) -> str:
    where = ""
    if frames := traceback.extract_tb(exc.__traceback__):
        last = frames[-1]
        where = f" (in {last.name}, {Path(last.filename).name}:{last.lineno})"
    return f"{type(exc).__name__}: {exc}{where}"
