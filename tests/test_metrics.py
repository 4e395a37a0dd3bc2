"""Prometheus metrics through the real CLI: the textfile node_exporter reads, a real
Pushgateway (Debian's `prometheus-pushgateway`) and a real Prometheus scraping both. Counts
equal the summary's to the token, through retries and failures; a failed run never moves the
last success."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from batch.cli import main
from batch.testing import FakeOllama, Fault
from tests.conftest import free_port, run_cli, summary_of, write_rows

SCHEMA = {"type": "object", "properties": {"label": {"enum": ["a", "b"]}}, "required": ["label"]}
LAST_SUCCESS = "batch_last_success_timestamp_seconds"


@pytest.fixture
def server() -> Iterator[FakeOllama]:
    with FakeOllama(models=["m"], slots=4) as fake:
        yield fake


@pytest.fixture
def rows(tmp_path: Path) -> Path:
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    return write_rows(tmp_path / "in.jsonl", 12)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def total(found: dict[Any, float], name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, sample_labels), value in found.items()
        if sample == name and labels.items() <= dict(sample_labels).items()
    )


def answer(failing: str) -> Any:
    """A responder: a label outside the schema for rows whose prompt holds `failing` (on every
    re-ask too), a valid one for the others."""

    def respond(body: dict[str, Any]) -> str:
        prompt = body["messages"][0]["content"]
        return '{"label": "c"}' if failing in prompt else '{"label": "a"}'

    return respond


def with_faults(server: FakeOllama) -> None:
    """Retries of three causes and one row that fails for good."""
    server.add_fault(Fault("busy", times=2))
    server.add_fault(Fault("drop", times=1))
    server.responder = answer("row 3")


def test_the_textfile_counts_what_the_summary_counts_through_retries_and_failures(
    server: FakeOllama, rows: Path
) -> None:
    with_faults(server)
    textfile = rows.parent / "batch.prom"
    assert (
        run_cli(rows, server.url, "--metrics-textfile", str(textfile), "--max-attempts", "3") == 1
    )
    summary = summary_of(rows)
    found = samples(textfile.read_text())
    assert total(found, "batch_rows_total", status="ok") == summary["rows"]["ok"] == 11
    assert total(found, "batch_rows_total", status="failed") == summary["rows"]["error"] == 1
    assert total(found, "batch_requests_total") == summary["attempts"]
    assert total(found, "batch_requests_total", host=server.url, model="m") == summary["attempts"]
    usage = summary["usage"]
    assert total(found, "batch_tokens_total", type="input") == usage["input_tokens"]
    assert total(found, "batch_tokens_total", type="output") == usage["output_tokens"]
    failed_attempts = summary["attempts"] - summary["rows"]["ok"]
    assert total(found, "batch_request_failures_total") == failed_attempts
    # Each failed attempt by its cause: those retried, and row 3's last (validation).
    by_cause = dict(summary["retries"]["by_cause"])
    by_cause["validation"] = by_cause.get("validation", 0) + 1
    for cause, count in by_cause.items():
        assert total(found, "batch_request_failures_total", cause=cause) == count, cause
    assert total(found, "batch_request_duration_seconds_count") == summary["attempts"]
    assert total(found, "batch_concurrency_limit", host=server.url) >= 1
    assert total(found, "batch_rows_left") == 0
    assert LAST_SUCCESS not in {name for name, _ in found}  # exit 1: no success to stamp
    for name, labels in found:
        assert all("row " not in value for _, value in labels), (name, labels)  # no prompt text


def test_a_failed_run_never_moves_the_last_success_in_the_textfile(
    server: FakeOllama, rows: Path
) -> None:
    textfile = rows.parent / "batch.prom"
    assert run_cli(rows, server.url, "--metrics-textfile", str(textfile)) == 0
    stamped = total(samples(textfile.read_text()), LAST_SUCCESS)
    assert time.time() - 60 < stamped <= time.time()
    write_rows(rows, 14)  # two more rows, which fail
    server.responder = answer("row 1")
    time.sleep(0.01)
    assert run_cli(rows, server.url, "--metrics-textfile", str(textfile)) == 1
    found = samples(textfile.read_text())
    assert total(found, LAST_SUCCESS) == stamped
    assert total(found, "batch_rows_total", status="failed") == 2
    assert total(found, "batch_rows_total", status="skipped") == 12


def test_a_port_in_use_is_a_clear_error(
    server: FakeOllama, rows: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    with FakeOllama(port=port):
        assert run_cli(rows, server.url, "--metrics-port", f"127.0.0.1:{port}") == 2
    assert f"cannot serve metrics on 127.0.0.1:{port} (--metrics-port)" in capsys.readouterr().err


def test_metrics_settings_come_from_the_job_file_and_are_checked(
    rows: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows.with_suffix(".toml").write_text('metrics_port = "nine"\n')
    assert main(["run", str(rows), "-m", "m", "-q"]) == 2
    assert "'nine' is not [ADDR:]PORT" in capsys.readouterr().err


# ---- the real Pushgateway and Prometheus -------------------------------------------------------

needs_pushgateway = pytest.mark.skipif(
    shutil.which("prometheus-pushgateway") is None,
    reason="Debian's prometheus-pushgateway is not installed (.ci/run installs it)",
)
needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="Debian's prometheus is not installed (.ci/run installs it)",
)


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        text: str = reply.read().decode()
        return text


def wait_for(url: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            get(url)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        # Debian's build persists to a file under /var/lib by default: kept in memory here.
        ["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(url + "/-/ready")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def gateway_groups(gateway: str) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = json.loads(get(gateway + "/api/v1/metrics"))["data"]
    return groups


@pytest.mark.slow
@needs_pushgateway
def test_the_pushgateway_holds_the_runs_counts_and_keeps_the_last_success_of_a_failed_run(
    server: FakeOllama, rows: Path, pushgateway: str
) -> None:
    with_faults(server)
    argv = ["--pushgateway", pushgateway, "--max-attempts", "3"]
    server.responder = answer("row")  # every row fails: exit 1
    assert run_cli(rows, server.url, *argv, "--metrics-job", "nightly") == 1
    found = samples(get(pushgateway + "/metrics"))
    assert LAST_SUCCESS not in {name for name, _ in found}
    [group] = gateway_groups(pushgateway)
    assert group["labels"] == {"job": "nightly"}  # no instance label

    server.responder = answer("no row")
    rows.with_name("in.out.jsonl").unlink()
    assert run_cli(rows, server.url, *argv) == 0
    summary = summary_of(rows)
    found = samples(get(pushgateway + "/metrics"))
    assert total(found, "batch_rows_total", job="batch", status="ok") == 12
    assert total(found, "batch_requests_total", job="batch") == summary["attempts"]
    tokens = total(found, "batch_tokens_total", job="batch", type="output")
    assert tokens == summary["usage"]["output_tokens"]
    stamped = total(found, LAST_SUCCESS, job="batch")
    assert stamped > 0

    server.responder = answer("row")
    assert run_cli(rows, server.url, *argv, "--overwrite") == 1
    found = samples(get(pushgateway + "/metrics"))
    assert total(found, LAST_SUCCESS, job="batch") == stamped  # a failed run never moves it
    assert total(found, "batch_rows_total", job="batch", status="failed") == 12


@pytest.mark.slow
@needs_pushgateway
def test_a_sharded_run_pushes_under_its_shard(
    server: FakeOllama, rows: Path, pushgateway: str
) -> None:
    assert run_cli(rows, server.url, "--pushgateway", pushgateway, "--shard", "1/2") == 0
    [group] = gateway_groups(pushgateway)
    assert group["labels"] == {"job": "batch", "shard": "1/2"}


@pytest.fixture
def prometheus(tmp_path: Path, pushgateway: str) -> Iterator[tuple[str, int]]:
    """A real Prometheus scraping the gateway and a --metrics-port target every 200 ms."""
    target = free_port()
    config = tmp_path / "prometheus.yml"
    gateway = urllib.parse.urlsplit(pushgateway).netloc
    config.write_text(
        "global: {scrape_interval: 200ms, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - {job_name: gateway, honor_labels: true,\n"
        f"     static_configs: [{{targets: ['{gateway}']}}]}}\n"
        f"  - {{job_name: live, static_configs: [{{targets: ['127.0.0.1:{target}']}}]}}\n"
    )
    port = free_port()
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(url + "/-/ready")
        yield url, target
    finally:
        process.terminate()
        process.wait(timeout=20)


def query(prometheus: str, promql: str) -> list[dict[str, Any]]:
    url = prometheus + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    found: list[dict[str, Any]] = json.loads(get(url))["data"]["result"]
    return found


def query_until(prometheus: str, promql: str, seconds: float = 20.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + seconds
    while not (found := query(prometheus, promql)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return found


@pytest.mark.slow
@needs_prometheus
@needs_pushgateway
def test_prometheus_scrapes_the_live_endpoint_and_the_gateway_and_promql_matches_the_summary(
    rows: Path, pushgateway: str, prometheus: tuple[str, int]
) -> None:
    url, target = prometheus
    assert query_until(url, 'up{job="gateway"} == 1'), "Prometheus never scraped the gateway"
    with FakeOllama(models=["m"], slots=2, latency=0.5) as slow:  # 12 rows: about 3 s
        argv = ["--metrics-port", f"127.0.0.1:{target}", "--pushgateway", pushgateway]
        assert run_cli(rows, slow.url, *argv, "--concurrency", "2") == 0
    summary = summary_of(rows)
    live = query_until(url, 'max_over_time(batch_requests_total{job="live"}[5m])')
    assert live, "Prometheus never scraped the run's /metrics"
    assert 0 < sum(float(r["value"][1]) for r in live) <= summary["attempts"]
    limit = query_until(url, 'max_over_time(batch_concurrency_limit{job="live"}[5m])')
    assert [float(r["value"][1]) for r in limit] == [2.0]
    ok = query_until(url, 'batch_rows_total{job="batch",status="ok"}')
    assert [float(r["value"][1]) for r in ok] == [summary["rows"]["ok"]]
    tokens = query_until(url, 'sum(batch_tokens_total{job="batch"})')
    usage = summary["usage"]
    assert [float(r["value"][1]) for r in tokens] == [
        usage["input_tokens"] + usage["output_tokens"]
    ]


def test_with_nothing_asked_for_neither_library_is_imported(rows: Path) -> None:
    """A run with no metrics flag and no OTLP endpoint pays nothing for them."""
    script = (
        "import sys\n"
        "from batch.cli import main\n"
        "from batch.testing import FakeOllama\n"
        "with FakeOllama(models=['m']) as server:\n"
        f"    code = main(['run', {str(rows)!r}, '--host', server.url, '-m', 'm', '-q'])\n"
        "loaded = [m for m in ('prometheus_client', 'opentelemetry') if m in sys.modules]\n"
        "print(code, loaded)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "BATCH_"))}
    ran = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert ran.stdout.strip() == "0 []", ran.stdout + ran.stderr


def test_the_textfile_is_written_while_the_run_lasts(
    rows: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    import anyio

    import batch.run.pipeline
    from batch import JobConfig, run_job

    monkeypatch.setattr(batch.run.pipeline, "EXPORT_EVERY_S", 0.05)
    textfile = rows.parent / "batch.prom"
    seen_during: list[float] = []
    with FakeOllama(models=["m"], latency=0.1) as slow:  # 12 rows one at a time: 1.2 s
        config = JobConfig(
            input=rows, model="m", hosts=(slow.url,), concurrency=1, metrics_textfile=textfile
        )
        run = threading.Thread(target=anyio.run, args=(run_job, config))
        run.start()
        while run.is_alive():
            if textfile.exists():
                found = samples(textfile.read_text())
                seen_during.append(total(found, "batch_rows_total", status="ok"))
            time.sleep(0.05)
        run.join()
    assert any(0 < ok < 12 for ok in seen_during), seen_during  # rows counted mid-run
    assert total(samples(textfile.read_text()), "batch_rows_total", status="ok") == 12


def test_a_gateway_that_is_no_http_server_is_a_warning_and_the_run_goes_on(
    rows: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import socketserver
    import threading

    import batch.run.pipeline

    class Banner(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.sendall(b"SSH-2.0-OpenSSH_9.0\r\n")

    monkeypatch.setattr(batch.run.pipeline, "EXPORT_EVERY_S", 0.05)
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Banner) as banner:
        threading.Thread(target=banner.serve_forever, daemon=True).start()
        gateway = f"http://127.0.0.1:{banner.server_address[1]}"
        with FakeOllama(models=["m"], latency=0.05) as slow:
            argv = ["--pushgateway", gateway, "--concurrency", "1"]
            assert run_cli(rows, slow.url, *argv) == 0
        banner.shutdown()
    assert summary_of(rows)["rows"]["ok"] == 12
    assert f"cannot push metrics to {gateway}" in capsys.readouterr().err


def test_a_run_refused_at_its_start_leaves_no_metrics_port_open(
    server: FakeOllama, rows: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")  # refused: http/protobuf only
    port = free_port()
    assert run_cli(rows, server.url, "--metrics-port", f"127.0.0.1:{port}", "--otel") == 2
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))  # free: nothing still listens there
