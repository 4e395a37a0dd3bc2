"""Production setups through the CLI and the real `ollama` client: a token-checking proxy, HTTPS
with a CA made here, proxies, the model check, keep-alive, think, and truncated prompts."""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from batch.testing import FakeOllama, Fault
from tests.conftest import free_port, output_by_id, run_cli, summary_of

SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": ["positive", "negative", "neutral"]}},
    "required": ["label"],
}
TOKEN = "tok-3f9a1c7e5b"
# Everything here reaches the server through the transport: run it on each (BATCH_HTTP).
pytestmark = pytest.mark.usefixtures("http_stack", "clean_environment")


@pytest.fixture
def job(tmp_path: Path) -> Callable[..., Path]:
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))

    def make(prompts: list[str] | int = 3) -> Path:
        if isinstance(prompts, int):
            prompts = [f"row {i}" for i in range(prompts)]
        path = tmp_path / "in.jsonl"
        lines = [json.dumps({"id": i, "prompt": p}) for i, p in enumerate(prompts)]
        path.write_text("".join(line + "\n" for line in lines))
        return path

    return make


# ---- credentials --------------------------------------------------------------------------------


def test_the_api_key_is_sent_as_a_bearer_token(
    job: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_API_KEY", TOKEN)
    with FakeOllama(models=["m"], require_headers={"Authorization": f"Bearer {TOKEN}"}) as fake:
        path = job(3)
        assert run_cli(path, fake.url) == 0
        assert fake.refused == 0
    assert summary_of(path)["rows"]["ok"] == 3


def test_headers_apply_to_every_host_or_to_the_one_named(
    job: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = job(6)
    with (
        FakeOllama(models=["m"], require_headers={"X-Team": "ml", "X-Gate": "a"}) as first,
        FakeOllama(models=["m"], require_headers={"X-Team": "ml", "X-Gate": "b"}) as second,
    ):
        (tmp_path / "in.toml").write_text(
            f'[headers]\n"X-Team" = "ml"\n[headers."{second.url}"]\n"X-Gate" = "b"\n'
        )
        code = run_cli(
            path, first.url, "--host", second.url, "--header", f"{first.url} X-Gate: a", "-c", "1"
        )
        assert code == 0
        assert first.refused == second.refused == 0
        assert first.request_count > 0 and second.request_count > 0


def test_a_header_for_a_host_that_is_not_used_is_refused(
    job: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_cli(job(1), "http://127.0.0.1:9", "--header", "http://127.0.0.2:9 X-Gate: a")
    assert code == 2
    assert "headers are set for http://127.0.0.2:9" in capsys.readouterr().err


def test_credentials_in_the_host_url_become_basic_auth_and_are_never_shown(
    job: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    basic = base64.b64encode(b"labeller:p@ss w0rd!").decode()
    with FakeOllama(models=["m"], require_headers={"Authorization": f"Basic {basic}"}) as fake:
        path = job(2)
        port = fake.url.rsplit(":", 1)[1]
        assert run_cli(path, f"http://labeller:p%40ss%20w0rd%21@127.0.0.1:{port}") == 0
    assert {r["host"] for r in output_by_id(path).values()} == {fake.url}
    assert summary_of(path)["hosts"] == [fake.url]
    assert "w0rd" not in capsys.readouterr().err


def test_missing_credentials_stop_the_run_at_once(
    job: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeOllama(models=["m"], require_headers={"Authorization": f"Bearer {TOKEN}"}) as fake:
        path = job(50)
        assert run_cli(path, fake.url, "-c", "4") == 2
        assert fake.refused == 1 and fake.request_count == 0  # not retried row by row
    err = capsys.readouterr().err
    assert f"{fake.url} wants credentials (HTTP 401)" in err
    assert "set OLLAMA_API_KEY" in err and "Traceback" not in err
    assert summary_of(path)["rows"]["total"] == 0


def test_refused_credentials_say_which_were_sent(
    job: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OLLAMA_API_KEY", "wrong-token")
    with FakeOllama(models=["m"], require_headers={"Authorization": f"Bearer {TOKEN}"}) as fake:
        assert run_cli(job(5), fake.url) == 2
        assert fake.refused == 1
    err = capsys.readouterr().err
    assert f"{fake.url} refused the credentials (HTTP 403)" in err
    assert "sent: the OLLAMA_API_KEY token" in err
    assert "wrong-token" not in err


def test_a_401_in_the_middle_of_a_run_is_fatal_too(job: Callable[..., Path]) -> None:
    with FakeOllama(models=["m"]) as fake:
        fake.add_fault(Fault("unauthorized", match="row 3"))
        path = job(30)
        assert run_cli(path, fake.url, "-c", "1") == 2
    assert "HTTP 401" in summary_of(path)["fatal"]
    assert len(output_by_id(path)) < 30


# ---- TLS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_server(ca: trustme.CA) -> Iterator[FakeOllama]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    with FakeOllama(models=["m"], ssl_context=context) as fake:
        yield fake


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "company-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def test_https_with_the_ca_bundle_works(
    tls_server: FakeOllama, ca_file: Path, job: Callable[..., Path]
) -> None:
    assert tls_server.url.startswith("https://")
    path = job(3)
    assert run_cli(path, tls_server.url, "--ca-bundle", str(ca_file)) == 0
    assert summary_of(path)["rows"]["ok"] == 3


def test_https_without_the_ca_fails_at_once_and_says_what_to_do(
    tls_server: FakeOllama, job: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(job(20), tls_server.url) == 2
    err = capsys.readouterr().err
    assert f"the TLS certificate of {tls_server.url} is not trusted" in err
    assert "--ca-bundle" in err and "Traceback" not in err
    assert tls_server.request_count == 0


def test_the_ca_bundle_also_comes_from_the_environment(
    tls_server: FakeOllama,
    ca_file: Path,
    job: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BATCH_CA_BUNDLE", str(ca_file))
    assert run_cli(job(1), tls_server.url) == 0


def test_insecure_skips_verification_and_warns(
    tls_server: FakeOllama, job: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(job(2), tls_server.url, "--insecure") == 0
    assert "TLS certificate verification is off" in capsys.readouterr().err


def test_an_unreadable_ca_bundle_is_a_usage_error(
    job: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bogus = tmp_path / "not-a-ca.pem"
    bogus.write_text("hello")
    assert run_cli(job(1), "https://127.0.0.1:9", "--ca-bundle", str(bogus)) == 2
    assert "cannot read CA certificates" in capsys.readouterr().err


def test_the_documented_production_setup_works(
    ca: trustme.CA, ca_file: Path, job: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """README "Production setups": HTTPS with a company CA, a bearer token, a proxy header."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    needed = {"Authorization": f"Bearer {TOKEN}", "X-Proxy-Token": "gate-1"}
    with FakeOllama(models=["m"], require_headers=needed, ssl_context=context) as proxy:
        monkeypatch.setenv("OLLAMA_API_KEY", TOKEN)
        monkeypatch.setenv("BATCH_HEADERS", json.dumps({proxy.url: {"X-Proxy-Token": "gate-1"}}))
        path = job(4)
        assert run_cli(path, proxy.url, "--ca-bundle", str(ca_file)) == 0
        assert proxy.refused == 0
    assert summary_of(path)["rows"]["ok"] == 4


# ---- proxies ------------------------------------------------------------------------------------


def test_loopback_is_never_sent_through_the_environment_proxy(
    job: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOllama(models=["m"]) as target, FakeOllama(models=["m"]) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("ALL_PROXY", proxy.url)
        assert run_cli(job(2), target.url) == 0
        assert target.request_count == 2 and proxy.request_count == 0


def test_the_environment_proxy_carries_other_hosts(
    job: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fake answers a forwarded request as if it were the host: it can stand in for a proxy.
    with FakeOllama(models=["m"]) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        path = job(2)
        assert run_cli(path, "http://ollama.batch-test.invalid:11434") == 0
        assert proxy.request_count == 2
    assert summary_of(path)["hosts"] == ["http://ollama.batch-test.invalid:11434"]


def test_an_explicit_proxy_carries_loopback_too(job: Callable[..., Path]) -> None:
    with FakeOllama(models=["m"]) as proxy:
        target = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        assert run_cli(job(2), target, "--proxy", proxy.url) == 0
        assert proxy.request_count == 2


def test_credentials_in_the_proxy_url_go_to_the_proxy(
    job: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    basic = base64.b64encode(b"relay:pr0xy-pass").decode()
    with FakeOllama(
        models=["m"], require_headers={"Proxy-Authorization": f"Basic {basic}"}
    ) as proxy:
        port = proxy.url.rsplit(":", 1)[1]
        path = job(2)
        code = run_cli(
            path,
            "http://ollama.batch-test.invalid:11434",
            "--proxy",
            f"http://relay:pr0xy-pass@127.0.0.1:{port}",
        )
        assert code == 0
        assert proxy.refused == 0 and proxy.request_count == 2
    assert "pr0xy-pass" not in capsys.readouterr().err


# ---- the model's life ---------------------------------------------------------------------------


def test_a_missing_model_fails_before_any_row_is_sent(
    job: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeOllama(models=["m"]) as fake:
        assert run_cli(job(100), fake.url, model="m-typo") == 2
        assert fake.request_count == 0
    assert "model 'm-typo' is not available" in capsys.readouterr().err


def test_the_model_is_kept_loaded_then_handed_back_with_the_server_default(
    job: Callable[..., Path],
) -> None:
    with FakeOllama(models=["m"]) as fake:
        assert run_cli(job(4), fake.url) == 0
    [last] = fake.loads
    assert [r["keep_alive"] for r in fake.requests] == ["30m"] * 4
    assert fake.load_requests == 1
    # A request without keep_alive would change nothing: the server's default is set again.
    assert last["model"] == "m" and not last.get("messages") and last["keep_alive"] == "5m"
    assert fake.keep_alive == {"m:latest": "5m"} and fake.reloads == 0


def test_a_keep_alive_the_user_set_is_sent_and_left_in_place(job: Callable[..., Path]) -> None:
    with FakeOllama(models=["m"]) as fake:
        assert run_cli(job(3), fake.url, "--keep-alive", "-1") == 0
    assert [r["keep_alive"] for r in fake.requests] == [-1.0] * 3
    assert fake.load_requests == 0


def test_a_bad_keep_alive_is_a_usage_error(
    job: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(job(1), "http://127.0.0.1:9", "--keep-alive", "forever") == 2
    assert "is not a duration" in capsys.readouterr().err


def test_think_is_off_by_default_when_a_schema_is_set(job: Callable[..., Path]) -> None:
    with FakeOllama(models=["plain"], thinking_models=["reasoner"]) as fake:
        assert run_cli(job(2), fake.url, model="reasoner") == 0
        assert run_cli(job(2), fake.url, "--overwrite", model="plain") == 0
    assert [r["think"] for r in fake.requests if r.get("messages")] == [False] * 4


def test_think_can_be_set(job: Callable[..., Path]) -> None:
    with FakeOllama(models=["m"], thinking_models=["reasoner"]) as fake:
        path = job(2)
        assert run_cli(path, fake.url, "--think", "low", model="reasoner") == 0
    assert [r["think"] for r in fake.requests if r.get("messages")] == ["low", "low"]
    assert all(r["status"] == "ok" for r in output_by_id(path).values())


def test_think_on_a_model_that_does_not_think_fails_fast(
    job: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeOllama(models=["m"]) as fake:
        assert run_cli(job(10), fake.url, "--think", "on") == 2
        assert fake.request_count == 0
    assert "does not think" in capsys.readouterr().err


# ---- truncated prompts --------------------------------------------------------------------------


def test_prompts_that_fill_the_context_are_marked_and_counted(
    job: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    long = " ".join(["word"] * 40)
    with FakeOllama(models=["m"], context_length=16) as fake:
        path = job(["short one", long, "another short", long])
        assert run_cli(path, fake.url, "--max-attempts", "3", "--no-dedup") == 1
        sent = fake.request_count
    rows = output_by_id(path)
    assert [rows[i]["status"] for i in range(4)] == ["ok", "error", "ok", "error"]
    error = rows[1]["error"]
    assert error["type"] == "prompt_truncated"
    # Sent with truncate: false, the over-long prompt is refused, its size named.
    assert (error["prompt_tokens"], error["context_length"]) == (40, 16)
    assert "num_ctx" in error["message"]
    assert rows[1]["attempts"] == 1 and sent == 4  # not re-asked: it would be cut again
    result = summary_of(path)
    assert result["prompts_truncated"] == 2
    assert result["errors_by_type"] == {"prompt_truncated": 2}
    assert "2 prompts filled the model's context" in capsys.readouterr().err


def test_the_requested_num_ctx_is_the_limit(job: Callable[..., Path]) -> None:
    with FakeOllama(models=["m"], context_length=4096) as fake:
        path = job(["one two three four five six", "one two"])
        assert run_cli(path, fake.url, "--option", "num_ctx=4") == 1
    rows = output_by_id(path)
    assert rows[0]["error"]["context_length"] == 4 and rows[1]["status"] == "ok"


# ---- secrets ------------------------------------------------------------------------------------

KEY, HEADER, FLAG_HEADER, PASSWORD = (
    "planted-key-8c1d2e",
    "planted-header-55aa",
    "planted-flag-77bb",
    "planted-pass-99cc",
)
SECRETS = (KEY, HEADER, FLAG_HEADER, PASSWORD, base64.b64encode(f"u:{PASSWORD}".encode()).decode())


def test_no_secret_appears_in_anything_a_run_writes_or_prints(
    job: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG")  # httpx and httpcore too: they log every request at DEBUG/INFO
    monkeypatch.setenv("OLLAMA_API_KEY", KEY)
    monkeypatch.setenv("BATCH_HEADERS", json.dumps({"X-Proxy-Token": HEADER}))
    common = {"X-Proxy-Token": HEADER, "X-Flag": FLAG_HEADER}
    basic = base64.b64encode(f"u:{PASSWORD}".encode()).decode()
    with (
        FakeOllama(models=["m"], require_headers={**common, "Authorization": f"Bearer {KEY}"}) as a,
        FakeOllama(
            models=["m"], require_headers={**common, "Authorization": f"Basic {basic}"}
        ) as b,
    ):

        def echo_the_token(body: dict[str, Any]) -> str:
            if "row 1" in body["messages"][-1]["content"]:  # a proxy that quotes what it got
                raise PermissionError(f"token {KEY} / {HEADER} / {FLAG_HEADER} not accepted")
            return '{"label": "neutral"}'

        for server in (a, b):
            server.responder = echo_the_token
            server.add_fault(Fault("busy", times=2))
            server.add_fault(Fault("prose", match="row 2", times=None))
        with_password = f"http://u:{PASSWORD}@127.0.0.1:{b.url.rsplit(':', 1)[1]}"
        flags = ["--host", with_password, "--header", f"X-Flag: {FLAG_HEADER}", "-v"]
        path = job(8)
        assert run_cli(path, a.url, *flags, "--max-attempts", "3") == 1
        written = [p.read_text() for p in sorted(tmp_path.glob("in.out*"))]
        for server in (a, b):
            server.add_fault(Fault("unauthorized", times=None))
        assert run_cli(path, a.url, *flags, "--overwrite") == 2
    out, err = capsys.readouterr()
    logged = [f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records]
    written += [p.read_text() for p in sorted(tmp_path.glob("in.out*"))]
    everything = "\n".join([out, err, *logged, *written])
    # What was scanned holds what it should: debug lines, httpx's request log, the fatal 401,
    # and the server's echo of the credentials, with them blanked out.
    assert "attempt 1 failed" in err and "refused the credentials (HTTP 401)" in err
    assert any("HTTP Request: POST" in line for line in logged)
    assert "token *** / *** / *** not accepted" in written[0]
    for secret in SECRETS:
        assert secret not in everything
