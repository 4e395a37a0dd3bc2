"""Shared fixtures, and the helpers the test files share (import them from `tests.conftest`)."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from batch.cli import main
from batch.testing import FakeOllama

# Property tests (tests/test_hostile_props.py): a few examples each by default, so the suite
# stays fast; HYPOTHESIS_PROFILE=deep runs many more.
settings.register_profile(
    "fast", max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("deep", settings.get_profile("fast"), max_examples=300)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))

# Retries wait next to nothing in tests: the backoff is not what they check.
FAST_RETRIES = ("--backoff", "0.01", "--backoff-max", "0.05")
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@pytest.fixture(autouse=True)
def _outputs_are_strict_json(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every output a test leaves in its tmp_path holds standard JSON (RFC 8259) and nothing
    else: checked after each test, so a writer that lets NaN, bad UTF-8 or a lone surrogate
    through fails the test that made it. Tests that need no tmp_path cost nothing here."""
    if "tmp_path" not in request.fixturenames:
        yield
        return
    tmp_path: Path = request.getfixturevalue("tmp_path")  # set up first, torn down after
    yield
    for path in tmp_path.rglob("*.jsonl"):
        if path.name.endswith((".out.jsonl", "errors.jsonl")):
            assert_strict_jsonl(path)


def assert_strict_jsonl(path: Path) -> None:
    """Each whole line of `path` is strict JSON; a last line cut short (a kill) is allowed."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    for number, raw in enumerate(lines[:-1], start=1):
        assert_strict_json(raw, f"{path.name} line {number}")


def assert_strict_json(raw: bytes, where: str) -> Any:
    """`raw` parsed as RFC 8259 JSON: UTF-8, no NaN or Infinity, no lone surrogate."""
    text = raw.decode("utf-8")  # strict: bad UTF-8 raises

    def refuse(constant: str) -> Any:
        raise AssertionError(f"{where} holds {constant}, which is not JSON: {text[:200]}")

    def finite(number: str) -> float:
        if not math.isfinite(value := float(number)):
            refuse(number)
        return value

    value = json.loads(text, parse_constant=refuse, parse_float=finite)
    if "\\u" in text:  # an escape might spell a lone surrogate; read the decoded text
        assert not LONE_SURROGATE.search(json.dumps(value, ensure_ascii=False)), where
    return value


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Ollama host or key, no proxy from the machine running the tests: each test that
    reaches a server sets what it means to test."""
    for name in ("OLLAMA_API_KEY", "OLLAMA_HOST", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)


@pytest.fixture
def fake_ollama() -> Iterator[FakeOllama]:
    """A fresh fake Ollama server per test, serving `fake-model` from a background thread."""
    with FakeOllama() as fake:
        yield fake


def write_rows(path: Path, rows: int | Iterable[Any]) -> Path:
    """Rows `{"id": i, "prompt": "row i"}`, for i in range(rows) or in the ids given."""
    ids = range(rows) if isinstance(rows, int) else rows
    path.write_text("".join(json.dumps({"id": i, "prompt": f"row {i}"}) + "\n" for i in ids))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_cli(path: Path, host: str, *extra: str, model: str = "m") -> int:
    """`batch run` on `path` with the schema file beside it, quiet, with fast retries."""
    schema = str(path.parent / "schema.json")
    argv = ["run", str(path), "--model", model, "--host", host, "--schema", schema, "-q"]
    return main([*argv, *FAST_RETRIES, *extra])


def output_by_id(path: Path) -> dict[Any, dict[str, Any]]:
    """The output rows of input `path` (`in.jsonl` -> `in.out.jsonl`) by id, each id once."""
    rows = read_jsonl(path.with_name("in.out.jsonl"))
    by_id = {r["id"]: r for r in rows}
    assert len(by_id) == len(rows), "an id was written twice"
    return by_id


def summary_of(path: Path) -> dict[str, Any]:
    """The summary file of input `path`'s run."""
    result: dict[str, Any] = json.loads(path.with_name("in.out.summary.json").read_text())
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(params=["aiohttp", "httpx"])
def http_stack(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test once on each transport of the Ollama backend: aiohttp's (the default) and
    httpx's own (`BATCH_HTTP=httpx`)."""
    stack: str = request.param
    monkeypatch.setenv("BATCH_HTTP", stack)
    return stack


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A plain HTTP server on loopback running `handler` in a thread; yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def send_reply(
    handler: BaseHTTPRequestHandler,
    body: bytes,
    content_type: str,
    headers: dict[str, str] | None = None,
) -> None:
    """A 200 reply with `body`, for the hand-written servers of the tests (`serving`)."""
    handler.send_response(200)
    handler.send_header("Content-Type", content_type)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
