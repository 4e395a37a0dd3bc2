"""The Ollama backend's HTTP transport, through the real `ollama` client on each stack it has
(aiohttp by default, httpx's own with BATCH_HTTP=httpx): dropped and cut connections, streaming,
replies larger than any buffer or cap, connection reuse and the pool's limit, proxies from the
environment."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from batch.core.jsontext import MAX_REPLY_CHARS
from batch.serving.http_client import AccessSettings, connect, skip_empty_cookie_work
from batch.testing import FakeOllama, Fault
from tests.conftest import output_by_id, run_cli, send_reply, serving, summary_of, write_rows

ON_EACH_STACK = pytest.mark.usefixtures("http_stack")
SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": ["pos", "neg"]}},
    "required": ["label"],
}
USER = [{"role": "user", "content": "row 1"}]


pytestmark = pytest.mark.usefixtures("clean_environment")


@pytest.fixture
def job(tmp_path: Path) -> Callable[[int], Path]:
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    return lambda rows: write_rows(tmp_path / "in.jsonl", rows)


def client(fake: FakeOllama, connections: int = 2) -> ollama.AsyncClient:
    """The client as the backend builds it, on the stack BATCH_HTTP chose."""
    connection = connect(fake.url, AccessSettings())
    return ollama.AsyncClient(
        connection.host, timeout=httpx.Timeout(10.0), **connection.client_kwargs(connections)
    )


# ---- through the CLI ----------------------------------------------------------------------------


@ON_EACH_STACK
def test_a_connection_dropped_mid_reply_is_retried(job: Callable[[int], Path]) -> None:
    with FakeOllama(models=["m"]) as fake:
        fake.add_fault(Fault("drop_mid_reply", times=2))
        path = job(1)
        assert run_cli(path, fake.url) == 0
    [row] = output_by_id(path).values()
    assert row["status"] == "ok" and row["attempts"] == 3
    assert summary_of(path)["retries"] == {"total": 2, "by_cause": {"disconnect": 2}}


@ON_EACH_STACK
def test_a_reply_that_trickles_in_is_cut_at_the_timeout(job: Callable[[int], Path]) -> None:
    with FakeOllama(models=["m"]) as fake:
        fake.add_fault(Fault("trickle"))  # a byte a tenth of a second: no single read times out
        path = job(1)
        assert run_cli(path, fake.url, "--timeout", "1") == 0
    [row] = output_by_id(path).values()
    assert row["status"] == "ok" and row["attempts"] == 2
    assert summary_of(path)["retries"]["by_cause"] == {"timeout": 1}


@ON_EACH_STACK
def test_connections_are_reused_and_never_more_than_the_concurrency(
    job: Callable[[int], Path],
) -> None:
    with FakeOllama(models=["m"], slots=16, latency=0.01) as fake:
        path = job(60)
        assert run_cli(path, fake.url, "-c", "3") == 0
        assert fake.max_in_flight == 3
        # The model check, the version and 60 rows, on the same few connections.
        assert 1 <= fake.connections <= 3
    assert summary_of(path)["rows"]["ok"] == 60


@ON_EACH_STACK
def test_a_reply_over_every_buffer_and_the_cap_fails_only_its_row(
    job: Callable[[int], Path],
) -> None:
    big = '{"label": "pos", "pad": "' + "x" * (MAX_REPLY_CHARS + 10) + '"}'
    # Under the cap, yet far over the 64 KiB aiohttp reads at a time.
    large = '{"label": "neg", "pad": "' + "y" * 300_000 + '"}'
    with FakeOllama(models=["m"]) as fake:
        fake.responder = lambda body: big if body["messages"][0]["content"] == "row 1" else large
        path = job(3)
        assert run_cli(path, fake.url, "--max-attempts", "2") == 1
    rows = output_by_id(path)
    assert rows[0]["status"] == rows[2]["status"] == "ok"
    assert rows[0]["output"] == {"label": "neg", "pad": "y" * 300_000}
    assert rows[1]["error"]["type"] == "validation"
    assert f"over the cap of {MAX_REPLY_CHARS:,}" in rows[1]["error"]["message"]


@ON_EACH_STACK
def test_no_proxy_sends_a_host_directly(
    job: Callable[[int], Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeOllama(models=["m"]) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "example.com,batch-test.invalid")
        host = "http://ollama.batch-test.invalid:11434"
        assert run_cli(job(2), host, "--max-attempts", "2") == 2
        assert proxy.request_count == 0  # tried directly: the name does not resolve
    assert f"cannot connect to {host}" in capsys.readouterr().err


class _Gzipping(BaseHTTPRequestHandler):
    """An Ollama behind a proxy that compresses its replies."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        reply: dict[str, Any] = {"capabilities": ["completion"], "model_info": {}}  # /api/show
        if self.path == "/api/chat":
            message = {"role": "assistant", "content": '{"label": "pos"}'}
            reply = {"model": "m", "message": message, "done": True, "eval_count": 3}
        body = gzip.compress(json.dumps(reply).encode())
        send_reply(self, body, "application/json", {"Content-Encoding": "gzip"})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def gzipping_server() -> Iterator[str]:
    with serving(_Gzipping) as url:
        yield url


@ON_EACH_STACK
def test_a_compressed_reply_is_read(job: Callable[[int], Path], gzipping_server: str) -> None:
    path = job(2)
    assert run_cli(path, gzipping_server, model="m") == 0
    rows = output_by_id(path)
    assert [rows[i]["output"] for i in range(2)] == [{"label": "pos"}] * 2
    assert rows[0]["usage"]["output_tokens"] == 3


# ---- through the client -------------------------------------------------------------------------


@ON_EACH_STACK
async def test_streaming_and_non_streaming_replies_agree() -> None:
    with FakeOllama(models=["m"]) as fake:
        async with client(fake) as c:
            whole = await c.chat(model="m", messages=USER)
            parts = [p async for p in await c.chat(model="m", messages=USER, stream=True)]
    assert len(parts) > 2 and parts[-1].done and not parts[0].done
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    assert fake.connections == 1


@ON_EACH_STACK
async def test_a_long_stream_arrives_whole() -> None:
    long = " ".join(f"word{i}" for i in range(50_000))  # about 400 KB, in four chunks
    with FakeOllama(models=["m"]) as fake:
        fake.responder = lambda body: long
        async with client(fake) as c:
            parts = [p async for p in await c.chat(model="m", messages=USER, stream=True)]
    assert "".join(p.message.content or "" for p in parts) == long


@ON_EACH_STACK
@pytest.mark.parametrize("stream", [False, True])
async def test_a_reply_cut_off_midway_is_a_protocol_error(stream: bool) -> None:
    with FakeOllama(models=["m"]) as fake:
        fake.add_fault(Fault("drop_mid_reply"))
        async with client(fake) as c:
            with pytest.raises(httpx.RemoteProtocolError):
                if stream:
                    async for _ in await c.chat(model="m", messages=USER, stream=True):
                        pass
                else:
                    await c.chat(model="m", messages=USER)
            # The connection was dropped, not the client: the next request gets through.
            assert (await c.chat(model="m", messages=USER)).done


@ON_EACH_STACK
async def test_the_errors_the_backend_sorts_are_those_httpx_raises() -> None:
    with FakeOllama(models=["m"], hang_seconds=5) as fake:
        connection = connect(fake.url, AccessSettings())
        timeout = httpx.Timeout(0.3)
        async with ollama.AsyncClient(
            connection.host, timeout=timeout, **connection.client_kwargs(1)
        ) as c:
            fake.add_fault(Fault("drop"))
            with pytest.raises(httpx.RemoteProtocolError):
                await c.chat(model="m", messages=USER)
            fake.add_fault(Fault("hang"))
            with pytest.raises(httpx.ReadTimeout):
                await c.chat(model="m", messages=USER)
    refused = connect(fake.url, AccessSettings())  # the server is gone: nothing listens
    async with ollama.AsyncClient(refused.host, **refused.client_kwargs(1)) as c:
        with pytest.raises(ConnectionError):  # the client's own, from httpx.ConnectError
            await c.chat(model="m", messages=USER)


async def test_a_cookie_the_server_sets_is_still_sent_back() -> None:
    """A load balancer's session cookie: the client skips only the work of finding none."""
    sent: list[str | None] = []

    def gateway(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers.get("cookie"))
        cookie = {"Set-Cookie": "route=gpu2; Path=/"} if len(sent) == 2 else {}
        return httpx.Response(200, headers=cookie, json={})

    transport = httpx.MockTransport(gateway)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw.example") as http:
        skip_empty_cookie_work(http)
        for _ in range(4):
            await http.get("/api/version")
    assert sent == [None, None, "route=gpu2", "route=gpu2"]


# ---- the switch ---------------------------------------------------------------------------------


def test_an_unknown_stack_is_a_usage_error(
    job: Callable[[int], Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BATCH_HTTP", "requests")
    assert run_cli(job(1), "http://127.0.0.1:9") == 2
    assert "BATCH_HTTP=requests: use aiohttp (the default) or httpx" in capsys.readouterr().err


def test_a_socks_proxy_asks_for_httpx(
    job: Callable[[int], Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("BATCH_HTTP", raising=False)
    monkeypatch.setenv("ALL_PROXY", "socks5://127.0.0.1:9")
    assert run_cli(job(1), "http://ollama.batch-test.invalid:11434") == 2
    err = capsys.readouterr().err
    assert "is a socks5 proxy" in err and "BATCH_HTTP=httpx" in err
