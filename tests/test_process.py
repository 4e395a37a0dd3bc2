"""The worker as a process: killed, signalled, and facing a server that comes late or goes away."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batch.testing import FakeOllama
from tests.conftest import free_port, write_rows

pytestmark = pytest.mark.slow


def start(path: Path, host: str, *extra: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "batch", "run", str(path), "--model", "m", "--host", host]
    return subprocess.Popen(
        [*argv, "--backoff", "0.05", "--backoff-max", "0.2", *extra],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def complete_lines(path: Path) -> list[dict[str, Any]]:
    out = path.with_name("in.out.jsonl")
    if not out.exists():
        return []
    data = out.read_text()
    return [json.loads(line) for line in data.split("\n")[:-1]]


def wait_until_written(path: Path, count: int, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while len(complete_lines(path)) < count:
        assert time.monotonic() < deadline, f"fewer than {count} rows written in {limit}s"
        time.sleep(0.02)


def finish(proc: subprocess.Popen[str], limit: float = 20.0) -> tuple[int, str]:
    _, err = proc.communicate(timeout=limit)
    return proc.returncode, err


def assert_one_ok_line_per_row(path: Path, n: int) -> None:
    rows = complete_lines(path)
    assert sorted(r["id"] for r in rows) == list(range(n))
    assert all(r["status"] == "ok" for r in rows)


@pytest.fixture
def slow_server() -> Iterator[FakeOllama]:
    with FakeOllama(models=["m"], slots=4, latency=0.05) as fake:
        yield fake


def test_kill_9_mid_run_loses_nothing_written_and_the_rerun_completes(
    tmp_path: Path, slow_server: FakeOllama
) -> None:
    path = write_rows(tmp_path / "in.jsonl", 200)
    proc = start(path, slow_server.url, "-c", "4", "-q")
    wait_until_written(path, 20)
    proc.send_signal(signal.SIGKILL)
    assert finish(proc)[0] == -signal.SIGKILL
    written = complete_lines(path)
    with path.with_name("in.out.jsonl").open("a") as out:
        out.write('{"id": 999, "status": "o')  # the worst a kill can leave: half a line
    code, err = finish(start(path, slow_server.url, "-c", "8", "-q"))
    assert code == 0, err
    assert_one_ok_line_per_row(path, 200)
    summary = json.loads(path.with_name("in.out.summary.json").read_text())
    assert summary["rows"]["skipped"] == len(written)
    assert summary["rows"]["ok"] == 200 - len(written)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_taking_rows_keeps_what_completed_and_exits(
    tmp_path: Path, slow_server: FakeOllama, signum: int, code: int
) -> None:
    path = write_rows(tmp_path / "in.jsonl", 300)
    proc = start(path, slow_server.url, "-c", "4", "-q", "--grace-period", "5")
    wait_until_written(path, 8)
    proc.send_signal(signum)
    returncode, err = finish(proc, limit=10)
    assert returncode == code, err
    assert f"stopped by {signal.Signals(signum).name}" in err
    assert "Traceback" not in err
    summary = json.loads(path.with_name("in.out.summary.json").read_text())
    assert summary["stopped_by"] == signal.Signals(signum).name
    rows = complete_lines(path)
    assert len(rows) == summary["rows"]["ok"] < 300
    code_again, err = finish(start(path, slow_server.url, "-c", "8", "-q"))
    assert code_again == 0, err
    assert_one_ok_line_per_row(path, 300)


def test_a_server_that_comes_up_late_is_waited_for(tmp_path: Path) -> None:
    port = free_port()
    path = write_rows(tmp_path / "in.jsonl", 5)
    proc = start(path, f"http://127.0.0.1:{port}", "-v", "--max-attempts", "20")
    assert proc.stderr is not None
    for line in proc.stderr:  # the first refused connection is logged; then the server starts
        if "out of rotation" in line:
            break
    with FakeOllama(models=["m"], port=port):
        code, err = finish(proc)
    assert code == 0, err
    assert_one_ok_line_per_row(path, 5)


def test_a_server_that_goes_away_stops_the_run_and_a_rerun_finishes(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "in.jsonl", 200)
    fake = FakeOllama(models=["m"], slots=2, latency=0.05)
    fake.start()
    port = int(fake.url.rsplit(":", 1)[1])
    proc = start(path, fake.url, "-c", "2", "-q", "--max-attempts", "3")
    wait_until_written(path, 5)
    fake.stop()
    code, err = finish(proc)
    assert code == 2, err
    assert f"cannot connect to http://127.0.0.1:{port}" in err
    assert "Traceback" not in err
    with FakeOllama(models=["m"], port=port) as again:
        code, err = finish(start(path, again.url, "-q"))
    assert code == 0, err
    assert_one_ok_line_per_row(path, 200)
