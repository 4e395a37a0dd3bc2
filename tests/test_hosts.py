"""Several Ollama hosts in one run, through the real client against fake servers: per-host
concurrency, a host that dies, one that answers 503, one without the model."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from batch.cli import main
from batch.core.errors import Cause, ConfigError, FatalRunError, Transient
from batch.run.config import JobConfig, load_config
from batch.run.pipeline import run_job
from batch.serving.hosts import Host, HostPolicy, parse_host
from batch.testing import FakeOllama, Fault, FunctionBackend, completion
from tests.conftest import write_rows


def output_ids(config: JobConfig) -> list[Any]:
    lines = config.output_path.read_text().splitlines()
    return sorted(json.loads(line)["id"] for line in lines)


def ok_ids(config: JobConfig) -> list[Any]:
    rows = [json.loads(line) for line in config.output_path.read_text().splitlines()]
    return sorted(r["id"] for r in rows if r["status"] == "ok")


@pytest.fixture
def fakes() -> Iterator[list[FakeOllama]]:
    servers = [FakeOllama(models=["m"], latency=0.01, slots=4) for _ in range(3)]
    for server in servers:
        server.start()
    yield servers
    for server in servers:
        server.stop()


def config_for(tmp_path: Path, n: int, hosts: list[str], **settings: Any) -> JobConfig:
    settings.setdefault("backoff", 0.01)
    settings.setdefault("backoff_max", 0.05)
    return JobConfig(
        input=write_rows(tmp_path / "in.jsonl", n), model="m", hosts=tuple(hosts), **settings
    )


def summary_of(config: JobConfig) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads(config.summary_path.read_text())
    return summary


def test_a_host_names_its_own_concurrency_after_a_hash() -> None:
    assert parse_host("http://gpu1:11434#8").concurrency == 8
    assert parse_host("http://gpu1:11434#8").url == "http://gpu1:11434"
    assert parse_host("http://gpu1:11434").concurrency is None
    for bad in ("http://gpu1#0", "http://gpu1#x", "#4"):
        with pytest.raises(ValueError, match="URL#N"):
            parse_host(bad)


def test_the_host_list_comes_from_flags_environment_and_job_file(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "in.jsonl", 1)
    env = {"BATCH_HOST": "http://a:1#2, http://b:1"}
    assert load_config({"input": path}, env).serving.hosts == ("http://a:1#2", "http://b:1")
    (tmp_path / "in.toml").write_text('host = ["http://c:1#3", "http://d:1"]\n')
    assert load_config({"input": path}, {}).serving.hosts == ("http://c:1#3", "http://d:1")
    with pytest.raises(ConfigError, match="given twice"):
        load_config({"input": path, "hosts": ["http://a:1#2", "http://a:1/"]}, {})
    with pytest.raises(ConfigError, match="URL#N"):
        load_config({"input": path, "hosts": ["http://a:1#many"]}, {})


async def test_each_host_gets_at_most_its_own_concurrency(
    tmp_path: Path, fakes: list[FakeOllama]
) -> None:
    a, b, _ = fakes
    config = config_for(tmp_path, 60, [f"{a.url}#1", f"{b.url}#3"])
    summary = await run_job(config)
    assert summary.rows.ok == 60
    assert a.max_in_flight == 1
    assert 1 <= b.max_in_flight <= 3
    by_host = summary.as_record()["by_host"]
    assert by_host[a.url]["concurrency"] == 1 and by_host[b.url]["concurrency"] == 3
    assert by_host[a.url]["rows_ok"] + by_host[b.url]["rows_ok"] == 60


async def test_a_host_that_dies_mid_run_loses_no_row(
    tmp_path: Path, fakes: list[FakeOllama]
) -> None:
    doomed = fakes[0]
    config = config_for(tmp_path, 150, [f.url for f in fakes], concurrency=2)

    async def kill_after_some_rows() -> None:
        await anyio.to_thread.run_sync(doomed.wait_for_requests, 10)
        await anyio.to_thread.run_sync(doomed.stop)

    async with anyio.create_task_group() as tg:
        tg.start_soon(kill_after_some_rows)
        summary = await run_job(config)
    assert output_ids(config) == list(range(150))  # each row exactly once
    assert summary.rows.ok == 150
    dead = summary.as_record()["by_host"][doomed.url]
    assert dead["state"] in ("down", "lost") and dead["taken_out"] >= 1
    survivors = [summary.as_record()["by_host"][f.url]["rows_ok"] for f in fakes[1:]]
    assert sum(survivors) + dead["rows_ok"] == 150


async def test_a_host_that_answers_503_goes_out_of_rotation_and_comes_back(
    tmp_path: Path, fakes: list[FakeOllama]
) -> None:
    busy = fakes[0]
    busy.add_fault(Fault("busy", times=4))  # fewer than a row's attempts: no row can fail
    # A fixed limit: under auto, a 503 first halves the host's limit (tests/test_limits.py).
    config = config_for(tmp_path, 80, [f.url for f in fakes], concurrency=4)
    summary = await run_job(config)
    assert ok_ids(config) == list(range(80))
    report = summary.as_record()["by_host"][busy.url]
    assert report["failures"] == 4
    assert report["taken_out"] >= 1
    assert report["state"] == "up"


async def test_a_host_without_the_model_is_left_out(
    tmp_path: Path, fakes: list[FakeOllama]
) -> None:
    with FakeOllama(models=["other"]) as stranger:
        config = config_for(tmp_path, 30, [stranger.url, fakes[0].url])
        summary = await run_job(config)
        assert stranger.request_count == 0  # checked with /api/show, never sent a row
    assert ok_ids(config) == list(range(30))
    assert summary.as_record()["by_host"][stranger.url]["lacks_models"] == ["m"]


async def test_no_host_with_the_model_stops_the_run(tmp_path: Path) -> None:
    with FakeOllama(models=["x"]) as one, FakeOllama(models=["y"]) as two:
        config = config_for(tmp_path, 10, [one.url, two.url])
        with pytest.raises(FatalRunError, match="not available on any of the 2 hosts"):
            await run_job(config)


async def test_the_run_stops_only_when_every_host_is_gone(
    tmp_path: Path, fakes: list[FakeOllama]
) -> None:
    for fake in fakes:
        fake.stop()
    config = config_for(tmp_path, 10, [f.url for f in fakes], max_attempts=2)
    with pytest.raises(FatalRunError, match="no host is left") as caught:
        await run_job(config)
    for fake in fakes:
        assert f"cannot connect to {fake.url} after 2 attempts" in str(caught.value)
    assert summary_of(config)["complete"] is False


async def test_a_host_that_answers_only_errors_fails_rows_not_the_run(tmp_path: Path) -> None:
    with FakeOllama(models=["m"]) as broken:
        broken.add_fault(Fault("crash", times=None))
        config = config_for(tmp_path, 6, [broken.url], max_attempts=2, backoff=0)
        summary = await run_job(config)
    assert summary.rows.error == 6
    assert summary.fatal is None
    assert summary.as_record()["by_host"][broken.url]["taken_out"] >= 1


def test_the_end_of_a_run_prints_a_line_per_host(
    tmp_path: Path, fakes: list[FakeOllama], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_rows(tmp_path / "in.jsonl", 20)
    argv = ["run", str(path), "--model", "m", "-q", "--host", f"{fakes[0].url}#2"]
    assert main([*argv, "--host", fakes[1].url]) == 0
    err = capsys.readouterr().err
    for fake in fakes[:2]:
        assert re.search(rf"{re.escape(fake.url)}: \d+ ok, 0 failed, .* now up", err)


def test_a_host_state_follows_its_failures() -> None:
    host = Host(FunctionBackend(lambda _: completion("x")), 4, HostPolicy(lost_after=2))
    busy = Transient(Cause.HTTP_503, "busy")
    assert not host.failed(busy) and not host.failed(busy)
    assert not host.failed(Transient(Cause.HTTP_429, "quota"))  # the caller's, not the host's
    assert host.failed(busy) and host.state == "down"  # the third in a row
    host.probed(True)
    host.succeeded()
    assert host.state == "up" and host.failures_in_a_row == 0
    assert host.failed(Transient(Cause.CONNECT, "refused"))  # at once
    # One in flight beside it: the same outage.
    assert not host.failed(Transient(Cause.CONNECT, "refused"))
    assert host.state == "down"
    host.probed(False)
    assert host.state == "lost"  # refused, then no answer to GET /: two tries
    host.probed(True)
    assert host.state == "up"
