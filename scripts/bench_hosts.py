"""Many hosts, some lost mid-run, and shards: throughput against capacity, and no row lost.

    python scripts/bench_hosts.py [--hosts 16] [--rows 4000] [--shards 4]

Starts `--hosts` fake Ollama servers on loopback in this process (a thread each), of different
speeds: host i has 1 + i % 3 slots and answers in 0.15 + 0.05 * (i % 4) s, so its capacity is
slots / latency rows per second. Latency-bound, so the figures hold on a small machine.

1. One `python -m batch run` over all hosts (`URL#slots` each). When a quarter of the rows is
   written, hosts 0 and 1 are stopped; at half, host 0 comes back on its port. Reported: rows/s
   against the sum of the capacities, nominal and as available (each host's capacity times the
   share of the run it was up), and the check that every row is in the output exactly once, ok.
2. `--shards` worker processes at once, `--shard K/N` each, over the same hosts (none stopped),
   then `python -m batch merge` and its check.

Each measured program is its own process; wall time is from its start to its exit. Progress to
stderr; the report (markdown) to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_harness import ROOT, BenchError, count_lines, note, run_main

try:
    from batch.testing import FakeOllama
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))
    from batch.testing import FakeOllama


@dataclass
class Host:
    index: int
    slots: int
    latency: float
    server: FakeOllama
    port: int = 0
    up_since: float | None = None
    up_seconds: float = 0.0
    downs: list[float] = field(default_factory=list)

    @property
    def capacity(self) -> float:
        return self.slots / self.latency

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.server.start()
        self.port = int(self.server.url.rsplit(":", 1)[1])
        self.up_since = time.monotonic()

    def stop(self) -> None:
        self.server.stop()
        if self.up_since is not None:
            self.up_seconds += time.monotonic() - self.up_since
        self.up_since = None

    def restart(self) -> None:
        self.server = FakeOllama(
            models=["m"],
            slots=self.slots,
            latency=self.latency,
            port=self.port,
            record_requests=False,
        )
        self.start()

    def up_for(self, until: float) -> float:
        """Seconds up since the run started (when `up_seconds` was reset) until `until`."""
        running = (until - self.up_since) if self.up_since is not None else 0.0
        return self.up_seconds + running


def make_hosts(count: int) -> list[Host]:
    hosts = []
    for i in range(count):
        slots, latency = 1 + i % 3, round(0.15 + 0.05 * (i % 4), 2)
        server = FakeOllama(models=["m"], slots=slots, latency=latency, record_requests=False)
        hosts.append(Host(i, slots, latency, server))
    for host in hosts:
        host.start()
    return hosts


def write_rows(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"r{i}", "prompt": f"label row {i}"}) + "\n")


def check_once(path: Path, n: int) -> tuple[int, int, int, int]:
    """(ok, failed, missing, duplicated) of the output against ids r0..r{n-1}."""
    seen: dict[str, int] = {}
    ok = failed = 0
    for line in path.read_text().splitlines():
        record = json.loads(line)
        seen[record["id"]] = seen.get(record["id"], 0) + 1
        ok += record["status"] == "ok"
        failed += record["status"] != "ok"
    missing = sum(1 for i in range(n) if f"r{i}" not in seen)
    duplicated = sum(1 for count in seen.values() if count > 1)
    return ok, failed, missing, duplicated


def _last(said: str, lines: int = 15) -> str:
    """The end of what a program said on stderr."""
    return "\n".join(said.strip().splitlines()[-lines:]) or "(nothing)"


def batch_command(path: Path, hosts: list[Host], *extra: str) -> list[str]:
    argv = [sys.executable, "-m", "batch", "run", str(path), "--model", "m", "-q", *extra]
    for host in hosts:
        argv += ["--host", f"{host.url}#{host.slots}"]
    return argv


def losing_hosts(work: Path, hosts: list[Host], rows: int) -> dict[str, Any]:
    path = work / "in.jsonl"
    write_rows(path, rows)
    output = work / "in.out.jsonl"
    started = time.monotonic()
    for host in hosts:
        host.up_seconds, host.up_since = 0.0, started
    proc = subprocess.Popen(batch_command(path, hosts), stderr=subprocess.PIPE, text=True)
    events: list[str] = []
    stage = 0
    while proc.poll() is None:
        time.sleep(0.1)
        done = count_lines(output)
        if stage == 0 and done >= rows // 4:
            for host in hosts[:2]:
                host.stop()
            events.append(f"{time.monotonic() - started:.1f}s: stopped hosts 0 and 1 at row {done}")
            note(events[-1])
            stage = 1
        elif stage == 1 and done >= rows // 2:
            hosts[0].restart()
            events.append(f"{time.monotonic() - started:.1f}s: host 0 back at row {done}")
            note(events[-1])
            stage = 2
    _, err = proc.communicate()
    ended = time.monotonic()
    elapsed = ended - started
    summary_file = work / "in.out.summary.json"
    if not summary_file.exists():
        raise BenchError(
            f"the run over all hosts exited {proc.returncode} without a summary:\n{_last(err)}"
        )
    ok, failed, missing, duplicated = check_once(output, rows)
    summary = json.loads(summary_file.read_text())
    nominal = sum(h.capacity for h in hosts)
    available = sum(h.capacity * h.up_for(ended) for h in hosts) / elapsed
    hosts[1].restart()  # for the sharded run
    return {
        "code": proc.returncode,
        "stderr": err,
        "elapsed": elapsed,
        "rows_per_s": ok / elapsed,
        "worker_rows_per_s": summary["throughput"]["rows_per_s"],
        "nominal": nominal,
        "available": available,
        "ok": ok,
        "failed": failed,
        "missing": missing,
        "duplicated": duplicated,
        "events": events,
        "by_host": summary["by_host"],
    }


def sharded(work: Path, hosts: list[Host], rows: int, shards: int) -> dict[str, Any]:
    folder = work / "sharded"
    folder.mkdir()
    path = folder / "in.jsonl"
    write_rows(path, rows)
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            batch_command(path, hosts, "--shard", f"{k}/{shards}"),
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(shards)
    ]
    codes = [(p.wait(), p.communicate()[1]) for p in procs]
    elapsed = time.monotonic() - started
    merge = subprocess.run(
        [sys.executable, "-m", "batch", "merge", str(path)], capture_output=True, text=True
    )
    merged = folder / "in.out.jsonl"
    if not merged.exists():
        said = merge.stderr.strip() or _last(next((e for c, e in codes if c), ""))
        raise BenchError(
            f"shards exited {[c for c, _ in codes]}, merge {merge.returncode}, "
            f"and no merged output:\n{said}"
        )
    ok, failed, missing, duplicated = check_once(merged, rows)
    per_shard = [count_lines(folder / f"in.shard-{k}-of-{shards}.out.jsonl") for k in range(shards)]
    return {
        "codes": [c for c, _ in codes],
        "errors": [e for c, e in codes if c],
        "elapsed": elapsed,
        "rows_per_s": ok / elapsed,
        "merge_code": merge.returncode,
        "merge_said": merge.stderr.strip(),
        "ok": ok,
        "failed": failed,
        "missing": missing,
        "duplicated": duplicated,
        "per_shard": per_shard,
        "nominal": sum(h.capacity for h in hosts),
    }


def report(hosts: list[Host], lost: dict[str, Any], split: dict[str, Any], argv: str) -> str:
    out = [
        f"`{argv}` on {os.cpu_count()} cores, Python {sys.version.split()[0]}",
        "",
        f"### {len(hosts)} hosts, two stopped mid-run, one back",
        "",
        *[f"- {e}" for e in lost["events"]],
        f"- exit {lost['code']}; {lost['ok']} ok, {lost['failed']} failed, "
        f"{lost['missing']} missing, {lost['duplicated']} duplicated",
        "",
        "| rows/s (wall) | rows/s (worker's clock) | capacity, all hosts up "
        "| capacity as available | share of available |",
        "|---|---|---|---|---|",
        f"| {lost['rows_per_s']:.1f} | {lost['worker_rows_per_s']:.1f} | {lost['nominal']:.1f} | "
        f"{lost['available']:.1f} | {lost['rows_per_s'] / lost['available']:.0%} |",
        "",
        "| host | slots | latency s | capacity rows/s | rows ok | failed requests "
        "| out of rotation | replies/s | state at end |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for host in hosts:
        h = lost["by_host"].get(host.url, {})
        out.append(
            f"| {host.index} | {host.slots} | {host.latency} | {host.capacity:.1f} | "
            f"{h.get('rows_ok', 0)} | {h.get('failures', 0)} | {h.get('taken_out', 0)} | "
            f"{h.get('completed_per_s', 0)} | {h.get('state', '?')} |"
        )
    out += [
        "",
        f"### {len(split['per_shard'])} shards at once, merged",
        "",
        f"- exits {split['codes']}; rows per shard {split['per_shard']}",
        f"- {split['rows_per_s']:.1f} rows/s (wall, first start to last exit) against "
        f"{split['nominal']:.1f} capacity",
        f"- merge exit {split['merge_code']}: {split['ok']} ok, {split['failed']} failed, "
        f"{split['missing']} missing, {split['duplicated']} duplicated",
    ]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=16)
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--shards", type=int, default=4)
    args = parser.parse_args(argv)
    shown = " ".join(["python scripts/bench_hosts.py", *(sys.argv[1:] if argv is None else argv)])
    return run_main(lambda: _report(args, shown))


def _report(args: argparse.Namespace, shown: str) -> int:
    hosts = make_hosts(args.hosts)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-hosts-") as tmp:
            work = Path(tmp)
            note("run over all hosts, losing two ...")
            lost = losing_hosts(work, hosts, args.rows)
            if lost["code"] not in (0, 1):
                note(lost["stderr"])
            note("sharded run ...")
            split = sharded(work, hosts, args.rows, args.shards)
            for error in split["errors"]:
                note(error)
            print(report(hosts, lost, split, shown))
    finally:
        for host in hosts:
            host.server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
