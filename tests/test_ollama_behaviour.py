"""Ollama as it really behaves (issue 12), by server version: each numbered item through the real
`ollama` client against the fake in the matching mode, then what `batch` does with it."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from batch.cli import main
from batch.core.chat import bounded_echo
from batch.core.errors import FatalRunError
from batch.serving.handback import keep_alive_as_found
from batch.serving.ollama_errors import HostContext, classify
from batch.testing import FakeOllama, Fault
from batch.testing.fake_ollama import CURRENT_VERSION, GO_RUNNER_VERSION

SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": ["positive", "negative", "neutral"]}},
    "required": ["label"],
}
TIMEOUT = httpx.Timeout(10.0)
BEFORE_TRUNCATE = "0.12.0"  # ignores the `truncate` field
LONG = " ".join(["word"] * 40)


pytestmark = pytest.mark.usefixtures("clean_environment")


@pytest.fixture
def job(tmp_path: Path) -> Callable[..., Path]:
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))

    def make(rows: list[Any] | int = 3) -> Path:
        if isinstance(rows, int):
            rows = [f"row {i}" for i in range(rows)]
        path = tmp_path / "in.jsonl"
        lines = [
            json.dumps({"id": i, **(r if isinstance(r, dict) else {"prompt": r})})
            for i, r in enumerate(rows)
        ]
        path.write_text("".join(line + "\n" for line in lines))
        return path

    return make


def run(path: Path, host: str, *extra: str, model: str = "m") -> int:
    argv = ["run", str(path), "--model", model, "--host", host, "-q", "--overwrite"]
    schema = ["--schema", str(path.parent / "schema.json")]
    return main([*argv, *schema, "--backoff", "0.01", "--backoff-max", "0.05", *extra])


def output(path: Path) -> dict[Any, dict[str, Any]]:
    lines = path.with_name("in.out.jsonl").read_text().splitlines()
    return {r["id"]: r for r in map(json.loads, lines)}


def summary(path: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(path.with_name("in.out.summary.json").read_text())
    return result


def client(fake: FakeOllama) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=fake.url, timeout=TIMEOUT, trust_env=False)


async def raw_chat(fake: FakeOllama, **body: Any) -> httpx.Response:
    """`/api/chat` with fields the client's request model would drop (`truncate`)."""
    body = {"model": "m", "stream": False, **body}
    async with httpx.AsyncClient(base_url=fake.url, timeout=TIMEOUT, trust_env=False) as http:
        return await http.post("/api/chat", json=body)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# ---- 1. cut prompts -----------------------------------------------------------------------------


async def test_the_fake_cuts_or_refuses_a_long_prompt_as_each_version_does() -> None:
    options = {"num_ctx": 16}
    for version, cut_to in ((CURRENT_VERSION, 10), (GO_RUNNER_VERSION, 16)):
        with FakeOllama(models=["m"], version=version) as fake:
            async with client(fake) as c:
                reply = await c.chat(model="m", messages=user(LONG), options=options)
            # The llama-server runner keeps num_ctx - max((num_ctx - num_keep) / 2, 1) tokens.
            assert reply.prompt_eval_count == cut_to and reply.done_reason == "stop"
            refused = await raw_chat(fake, messages=user(LONG), options=options, truncate=False)
            assert refused.status_code == 400
    assert refused.json()["error"] == "the input length exceeds the context length"
    with FakeOllama(models=["m"]) as fake:
        refused = await raw_chat(fake, messages=user(LONG), options=options, truncate=False)
    assert refused.json()["error"] == (
        "request (40 tokens) exceeds the available context size (16 tokens), try increasing it"
    )
    with FakeOllama(models=["m"], version=BEFORE_TRUNCATE) as fake:
        ignored = await raw_chat(fake, messages=user(LONG), options=options, truncate=False)
    assert ignored.json()["prompt_eval_count"] == 16  # the field is ignored: cut, as ever
    with FakeOllama(models=["m"], context_shift=False) as fake:
        no_shift = await raw_chat(fake, messages=user(LONG), options=options)
    assert no_shift.status_code == 400 and "longer than the context" in no_shift.json()["error"]


@pytest.mark.parametrize(
    ("version", "sizes"),
    [(CURRENT_VERSION, (40, 16)), (GO_RUNNER_VERSION, (None, 16)), (BEFORE_TRUNCATE, (16, 16))],
)
def test_a_cut_prompt_is_prompt_truncated_on_every_version(
    job: Callable[..., Path], version: str, sizes: tuple[int | None, int]
) -> None:
    with FakeOllama(models=["m"], version=version) as fake:
        path = job(["short", LONG])
        assert run(path, fake.url, "--option", "num_ctx=16") == 1
        sent = fake.request_count
    rows = output(path)
    assert rows[0]["status"] == "ok"
    error = rows[1]["error"]
    assert error["type"] == "prompt_truncated" and "num_ctx" in error["message"]
    assert (error.get("prompt_tokens"), error["context_length"]) == sizes
    assert rows[1]["attempts"] == 1 and sent == 2  # neither retried nor re-asked
    assert summary(path)["by_host"][fake.url]["server_version"] == version


def test_a_model_without_context_shift_refuses_and_the_row_says_so(
    job: Callable[..., Path],
) -> None:
    with FakeOllama(models=["m"], context_shift=False) as fake:
        path = job([LONG])
        assert run(path, fake.url, "--option", "num_ctx=16") == 1
    error = output(path)[0]["error"]
    assert error["type"] == "prompt_truncated" and error["context_length"] == 16


# ---- 2. messages dropped ------------------------------------------------------------------------


async def test_without_truncate_false_the_oldest_messages_go_unseen() -> None:
    messages = [
        {"role": "system", "content": "label it"},
        {"role": "user", "content": LONG},
        {"role": "assistant", "content": "prose"},
        {"role": "user", "content": "answer in JSON"},
    ]
    with FakeOllama(models=["m"]) as fake:
        async with client(fake) as c:
            reply = await c.chat(model="m", messages=messages, options={"num_ctx": 16})
        assert reply.done_reason == "stop"  # answered, without a sign
        assert [m["content"] for m in fake.messages_read[0]] == [
            "label it",
            "prose",
            "answer in JSON",
        ]
        refused = await raw_chat(fake, messages=messages, options={"num_ctx": 16}, truncate=False)
    assert refused.status_code == 400


def test_a_row_whose_messages_do_not_fit_fails_instead_of_losing_its_input(
    job: Callable[..., Path],
) -> None:
    messages = [{"role": "user", "content": LONG}, {"role": "user", "content": "label it"}]
    with FakeOllama(models=["m"]) as fake:
        path = job([{"messages": messages}])
        assert run(path, fake.url, "--option", "num_ctx=16") == 1
        assert fake.messages_read == []  # nothing reached the model
    assert output(path)[0]["error"]["type"] == "prompt_truncated"


def test_a_reask_echoes_only_part_of_a_long_bad_reply(job: Callable[..., Path]) -> None:
    runaway = " ".join(["blah"] * 3000)
    replies = iter([runaway, '{"label": "positive"}'])
    with FakeOllama(models=["m"], context_length=1000) as fake:
        fake.responder = lambda body: next(replies)
        path = job(["a review"])
        assert run(path, fake.url) == 0
        echoed = fake.requests[1]["messages"][-2]
    assert echoed["role"] == "assistant" and echoed["content"] == bounded_echo(runaway)
    assert len(echoed["content"]) < 1300 and output(path)[0]["status"] == "ok"
    assert fake.messages_read[1][-3]["content"] == "a review"  # the row's input was read


# ---- 3. hosts without a scheme ------------------------------------------------------------------


def test_a_host_without_a_scheme_comes_back_after_going_out(
    job: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOllama(models=["m"]) as fake:
        bare = fake.url.removeprefix("http://")
        fake.add_fault(Fault("crash", times=3))  # three in a row take the host out
        path = job(4)
        assert run(path, bare, "--max-attempts", "6") == 0
        monkeypatch.setenv("OLLAMA_HOST", bare)
        argv = ["run", str(path), "--model", "m", "-q", "--overwrite", "--backoff", "0.01"]
        fake.add_fault(Fault("crash", times=3))
        assert main([*argv, "--max-attempts", "6"]) == 0
    result = summary(path)
    assert result["rows"]["ok"] == 4
    assert list(result["by_host"]) == [fake.url]  # the one URL, shown as the client uses it
    assert result["by_host"][fake.url]["taken_out"] == 1


# ---- 4. keep-alive hand-back --------------------------------------------------------------------


def test_the_hand_back_restores_the_default_without_a_reload(job: Callable[..., Path]) -> None:
    with FakeOllama(models=["m"]) as fake:
        assert run(job(3), fake.url, "--option", "num_ctx=8192") == 0
        assert fake.reloads == 0 and fake.keep_alive == {"m:latest": "5m"}
        [hand_back] = fake.loads
    assert hand_back["options"] == {"num_ctx": 8192}  # the run's load options: no reload


def test_a_model_found_loaded_keeps_its_expiry(job: Callable[..., Path]) -> None:
    with FakeOllama(models=["m"]) as fake:
        load = {"model": "m", "messages": [], "keep_alive": "2h", "stream": False}
        httpx.post(f"{fake.url}/api/chat", json=load, trust_env=False).raise_for_status()
        assert run(job(2), fake.url) == 0
        restored = fake.keep_alive["m:latest"]
    assert isinstance(restored, float) and 7000 < restored <= 7200
    now = datetime.now(UTC)
    assert keep_alive_as_found(now + timedelta(minutes=2), now) == "5m"
    assert keep_alive_as_found(False, now) == "5m"


async def test_the_fake_keeps_each_keep_alive_and_reloads_on_changed_options() -> None:
    with FakeOllama(models=["m"]) as fake:
        async with client(fake) as c:
            await c.chat(model="m", messages=user("a"), keep_alive="1h")
            await c.chat(model="m", messages=user("b"))  # no keep_alive: unchanged
            assert fake.keep_alive == {"m:latest": "1h"} and fake.reloads == 0
            await c.chat(model="m", messages=user("c"), options={"num_ctx": 8192})
            assert fake.reloads == 1 and fake.keep_alive == {"m:latest": "5m"}
            await c.chat(model="m", messages=[], keep_alive=0)
            assert fake.keep_alive == {} and (await c.ps()).models == []


# ---- 5. options ---------------------------------------------------------------------------------


async def test_the_fake_checks_option_types_and_drops_unknown_names() -> None:
    with FakeOllama(models=["m"]) as fake:
        async with client(fake) as c:
            with pytest.raises(ollama.ResponseError) as info:
                await c.chat(model="m", messages=user("a"), options={"stop": "END"})
            await c.chat(model="m", messages=user("a"), options={"temprature": 0})
        assert fake.dropped_options == ["temprature"]
    assert (info.value.status_code, info.value.error) == (
        500,
        'option "stop" must be of type array',
    )


@pytest.mark.parametrize(
    ("option", "said"),
    [("temprature=0", "did you mean 'temperature'"), ("stop=END", "a list of strings")],
)
def test_bad_options_are_refused_before_the_first_row(
    job: Callable[..., Path], capsys: pytest.CaptureFixture[str], option: str, said: str
) -> None:
    with FakeOllama(models=["m"]) as fake:
        assert run(job(2), fake.url, "--option", option) == 2
        assert fake.request_count == 0
    assert said in capsys.readouterr().err


def test_a_row_with_a_bad_option_fails_alone(job: Callable[..., Path]) -> None:
    with FakeOllama(models=["m"]) as fake:
        path = job(["fine", {"prompt": "x", "options": {"stop": "END"}}])
        assert run(path, fake.url) == 1
    error = output(path)[1]["error"]
    assert error["type"] == "bad_input" and error["message"].startswith("line 2: option 'stop'")


def test_a_row_whose_option_is_not_a_finite_number_fails_alone(tmp_path: Path) -> None:
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    path = tmp_path / "in.jsonl"  # Python writes NaN into JSONL; JSON has no such number
    path.write_text(
        '{"id": 0, "prompt": "a"}\n{"id": 1, "prompt": "b", "options": {"temperature": NaN}}\n'
    )
    with FakeOllama(models=["m"]) as fake:
        assert run(path, fake.url) == 1
        assert fake.request_count == 1
    error = output(path)[1]["error"]
    assert (
        error["type"] == "bad_input" and "option 'temperature' must be a number" in error["message"]
    )


def test_a_500_naming_an_option_is_fatal() -> None:
    host = HostContext("http://gpu1:11434", ())
    failure = classify(host, 500, 'option "stop" must be of type array', "m", "/api/chat")
    assert isinstance(failure, FatalRunError) and "'stop'" in str(failure)


# ---- 6. a reply cut by the repetition guard -----------------------------------------------------


async def test_a_repeating_reply_ends_with_done_false() -> None:
    with FakeOllama(models=["m"]) as fake:
        fake.add_fault(Fault("repetition", times=2))
        async with client(fake) as c:
            reply = await c.chat(model="m", messages=user("a"))
            chunks = [p async for p in await c.chat(model="m", messages=user("a"), stream=True)]
    assert reply.done is False and reply.done_reason is None and reply.eval_count is None
    assert chunks and not any(p.done for p in chunks)


def test_a_repeating_reply_is_reasked_then_fails_as_incomplete(job: Callable[..., Path]) -> None:
    with FakeOllama(models=["m"]) as fake:
        fake.add_fault(Fault("repetition"))
        path = job(1)
        assert run(path, fake.url, "--max-attempts", "3") == 0
        assert output(path)[0]["attempts"] == 2
        assert fake.requests[1]["messages"][-1]["content"].startswith("Your reply stopped")
        fake.add_fault(Fault("repetition", times=None))
        assert run(path, fake.url, "--max-attempts", "3") == 1
    row = output(path)[0]
    assert row["error"]["type"] == "incomplete_reply" and row["attempts"] == 3


# ---- 7. 403 with an empty body, 401 with signin_url ---------------------------------------------


def test_a_foreign_host_header_gets_advice_about_the_proxy(
    job: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeOllama(models=["m"], check_host_header=True) as fake:
        assert run(job(1), fake.url) == 0  # the client's own Host is allowed
        assert run(job(1), fake.url, "--header", "Host: ollama.example.com") == 2
    err = capsys.readouterr().err
    assert "403 with no body" in err and "proxy_set_header Host" in err
    assert "OLLAMA_API_KEY" not in err


def test_a_cloud_model_asks_for_ollama_signin(
    job: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeOllama(models=["m"]) as fake:
        fake.add_fault(Fault("signin", times=None))
        assert run(job(1), fake.url) == 2
    assert "`ollama signin` on the server" in capsys.readouterr().err


# ---- 8. smaller ones ----------------------------------------------------------------------------


def test_a_show_without_model_info_is_read(job: Callable[..., Path]) -> None:
    with FakeOllama(models=["m"], model_info=False) as fake:
        path = job(3)
        assert run(path, fake.url) == 0
        assert fake.request_count == 3  # no retries
    assert summary(path)["rows"]["ok"] == 3


def test_vision_models_run_with_at_least_2048_tokens(
    job: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    prompt = " ".join(["word"] * 1500)
    with FakeOllama(models=["m"], vision_models=["v"]) as fake:
        path = job([prompt])
        options = ["--option", "num_ctx=1024", "--concurrency", "2"]
        assert run(path, fake.url, *options, model="v") == 0
    assert output(path)[0]["status"] == "ok"  # no false truncation alarm below 2048
    assert "one request at a time" in capsys.readouterr().err


def test_think_takes_max(job: Callable[..., Path]) -> None:
    with FakeOllama(models=["m"], thinking_models=["r"]) as fake:
        assert run(job(1), fake.url, "--think", "max", model="r") == 0
    assert fake.requests[0]["think"] == "max"


def test_rows_that_change_load_options_are_warned_about(
    job: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [{"prompt": "a", "options": {"num_ctx": 2048}}, {"prompt": "b"}]
    with FakeOllama(models=["m"]) as fake:
        assert run(job(rows), fake.url, "--concurrency", "1") == 0
    assert fake.reloads >= 1 and "reloads m" in capsys.readouterr().err
