"""What files, servers and disks from the wild throw at a run: each fails at most its own row,
or stops the run as one fatal message (exit 2), never with a traceback."""

from __future__ import annotations

import errno
import io
import json
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from batch import FatalRunError, JobConfig, run_job
from batch.cli import main
from batch.core.chat import ChatRequest, Completion
from batch.core.jsontext import MAX_DEPTH, MAX_REPLY_CHARS
from batch.testing import FakeOllama, FunctionBackend, TestBackend, completion
from tests.conftest import FAST_RETRIES, read_jsonl, run_cli, send_reply, serving, write_rows

SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"enum": ["pos", "neg"]},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["label"],
}
VALID = '{"label": "pos", "score": 0.5}'
MODEL = "fake-model"


@pytest.fixture
def schema_file(tmp_path: Path) -> Path:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(SCHEMA))
    return path


def write_lines(path: Path, *lines: str | bytes) -> Path:
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return path


def by_line(path: Path) -> dict[int, dict[str, Any]]:
    rows = read_jsonl(path.with_name("in.out.jsonl"))
    lines = {r["line"]: r for r in rows}
    assert len(lines) == len(rows), "a line was written twice"
    return lines


def config_for(tmp_path: Path, schema_file: Path, **settings: Any) -> JobConfig:
    return JobConfig(
        input=tmp_path / "in.jsonl", model="m", schema_ref=str(schema_file), backoff=0, **settings
    )


# --- input lines ----------------------------------------------------------------------------


async def test_a_line_nested_5000_deep_fails_only_its_row(
    tmp_path: Path, schema_file: Path
) -> None:
    deep = '{"id": "deep", "prompt": "x", "meta": ' + "[" * 5000 + "]" * 5000 + "}"
    write_lines(tmp_path / "in.jsonl", '{"id": 1, "prompt": "a"}', deep, '{"id": 3, "prompt": "c"}')
    summary = await run_job(config_for(tmp_path, schema_file), backends=[TestBackend()])
    rows = by_line(tmp_path / "in.jsonl")
    assert sorted(rows) == [1, 2, 3]
    assert rows[1]["status"] == rows[3]["status"] == "ok"
    assert rows[2]["error"]["type"] == "bad_input"
    assert rows[2]["error"]["message"].startswith("line 2 ")
    assert f"nested more than {MAX_DEPTH} levels" in rows[2]["error"]["message"]
    assert summary.rows.error == 1


async def test_nesting_up_to_the_cap_is_read(tmp_path: Path, schema_file: Path) -> None:
    meta = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)  # the row object is one level
    brackets_in_text = "[" * 500  # inside a string: not nesting
    write_lines(
        tmp_path / "in.jsonl",
        json.dumps({"id": 1, "prompt": brackets_in_text})[:-1] + f', "meta": {meta}}}',
    )
    await run_job(config_for(tmp_path, schema_file), backends=[TestBackend()])
    assert by_line(tmp_path / "in.jsonl")[1]["status"] == "ok"


def test_a_lone_surrogate_in_the_text_is_sent_as_u_fffd(
    tmp_path: Path, schema_file: Path, fake_ollama: FakeOllama
) -> None:
    path = write_lines(tmp_path / "in.jsonl", r'{"id": "s", "prompt": "a \ud800 b \udc00"}')
    assert run_cli(path, fake_ollama.url, model=MODEL) == 0
    assert by_line(path)[1]["status"] == "ok"
    [request] = fake_ollama.requests
    assert request["messages"][-1]["content"] == "a \ufffd b \ufffd"


def test_a_lone_surrogate_in_an_id_fails_its_row(
    tmp_path: Path, schema_file: Path, fake_ollama: FakeOllama
) -> None:
    path = write_lines(
        tmp_path / "in.jsonl", r'{"id": "s\ud800", "prompt": "a"}', '{"id": 2, "prompt": "b"}'
    )
    assert run_cli(path, fake_ollama.url, model=MODEL) == 1
    rows = by_line(path)
    assert rows[1]["id"] == 1  # the line number: the id itself cannot be written
    assert rows[1]["error"]["type"] == "bad_input"
    assert "surrogate" in rows[1]["error"]["message"]
    assert rows[2]["status"] == "ok"


async def test_a_number_too_long_for_python_fails_only_its_row(
    tmp_path: Path, schema_file: Path
) -> None:
    write_lines(tmp_path / "in.jsonl", '{"id": 1, "prompt": "a", "n": ' + "9" * 5000 + "}")
    await run_job(config_for(tmp_path, schema_file), backends=[TestBackend()])
    assert by_line(tmp_path / "in.jsonl")[1]["error"]["type"] == "bad_input"


# --- replies ----------------------------------------------------------------------------------


def by_prompt(replies: dict[str, str]) -> Callable[[dict[str, Any]], str]:
    """A fake-server responder: the reply for the first word of the row's prompt."""

    def respond(body: dict[str, Any]) -> str:
        user = next(m for m in body["messages"] if m["role"] == "user")
        return replies.get(user["content"], VALID)

    return respond


def test_a_reply_nested_20000_deep_fails_only_its_row(
    tmp_path: Path, schema_file: Path, fake_ollama: FakeOllama
) -> None:
    fake_ollama.responder = by_prompt({"row 1": "[" * 20000 + "]" * 20000})
    path = write_rows(tmp_path / "in.jsonl", 3)
    assert run_cli(path, fake_ollama.url, "--max-attempts", "2", model=MODEL) == 1
    rows = by_line(path)
    assert rows[1]["status"] == rows[3]["status"] == "ok"
    error = rows[2]["error"]
    assert error["type"] == "validation"
    assert f"nested more than {MAX_DEPTH} levels" in error["message"]
    assert rows[2]["attempts"] == 2  # re-asked like any invalid output


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_a_non_finite_number_in_a_reply_is_rejected_and_reasked(
    tmp_path: Path, schema_file: Path, fake_ollama: FakeOllama, constant: str
) -> None:
    bad = f'{{"label": "pos", "score": {constant}}}'
    asked: dict[str, int] = {}

    def respond(body: dict[str, Any]) -> str:  # row 1 is answered well when re-asked
        prompt = body["messages"][0]["content"]
        asked[prompt] = asked.get(prompt, 0) + 1
        return VALID if prompt == "row 1" and asked[prompt] > 1 else bad

    fake_ollama.responder = respond
    path = write_rows(tmp_path / "in.jsonl", 2)
    assert run_cli(path, fake_ollama.url, "--max-attempts", "3", model=MODEL) == 1
    rows = by_line(path)
    assert rows[1]["error"]["type"] == "validation"
    assert "not JSON" in rows[1]["error"]["message"]
    assert rows[1]["attempts"] == 3
    assert rows[2]["status"] == "ok" and rows[2]["attempts"] == 2  # the re-ask was answered
    # The autouse check reads the output strictly: no bare NaN reached it.


async def test_a_reply_over_the_size_cap_fails_its_row(tmp_path: Path, schema_file: Path) -> None:
    huge = '{"label": "pos", "pad": "' + "x" * MAX_REPLY_CHARS + '"}'
    write_rows(tmp_path / "in.jsonl", 1)
    backend = FunctionBackend(lambda _: completion(huge))
    await run_job(config_for(tmp_path, schema_file, max_attempts=2), backends=[backend])
    [row] = read_jsonl(tmp_path / "in.out.jsonl")
    assert row["error"]["type"] == "validation"
    assert f"over the cap of {MAX_REPLY_CHARS:,}" in row["error"]["message"]
    assert len(row["error"]["raw"]) < 2000  # the reply's start, not all of it


async def test_a_reply_with_a_lone_surrogate_is_written_as_valid_utf8(
    tmp_path: Path, schema_file: Path
) -> None:
    write_rows(tmp_path / "in.jsonl", 1)
    backend = FunctionBackend(lambda _: completion("not json \ud800"))
    await run_job(config_for(tmp_path, schema_file, max_attempts=1), backends=[backend])
    [row] = read_jsonl(tmp_path / "in.out.jsonl")
    assert row["error"]["raw"] == "not json \ufffd"


async def test_an_unexpected_backend_exception_fails_only_its_row(
    tmp_path: Path, schema_file: Path
) -> None:
    def reply(request: ChatRequest) -> Completion | Exception:
        boom = request.messages[-1]["content"] == "row 1"
        return RuntimeError("boom") if boom else completion(VALID)

    write_rows(tmp_path / "in.jsonl", 3)
    summary = await run_job(config_for(tmp_path, schema_file), backends=[FunctionBackend(reply)])
    rows = by_line(tmp_path / "in.jsonl")
    assert rows[2]["error"]["type"] == "internal"
    assert "RuntimeError: boom" in rows[2]["error"]["message"]
    assert summary.rows.ok == 2


class _RawChat(BaseHTTPRequestHandler):
    """An Ollama-shaped server whose reply to the prompt "row 1" is bytes that are not UTF-8."""

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        body = b'{"capabilities": ["completion"], "model_info": {}}'  # /api/show
        if self.path == "/api/chat":
            content = b"\xff\xfe" if request["messages"][-1]["content"] == "row 1" else b"{}"
            reply = b'{"model":"m","message":{"role":"assistant","content":"%s"},"done":true}'
            body = reply % content.replace(b'"', b'\\"')
        send_reply(self, body, "application/json")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def raw_server() -> Iterator[str]:
    with serving(_RawChat) as url:
        yield url


@pytest.mark.usefixtures("http_stack")
def test_a_reply_that_is_not_utf8_fails_only_its_row(tmp_path: Path, raw_server: str) -> None:
    (tmp_path / "schema.json").write_text('{"type": "object"}')
    path = write_rows(tmp_path / "in.jsonl", 5)
    assert run_cli(path, raw_server, "--max-attempts", "2", model=MODEL) == 1
    rows = by_line(path)
    assert [rows[n]["status"] for n in sorted(rows)] == ["ok", "error", "ok", "ok", "ok"]
    assert rows[2]["error"]["type"] == "transport"
    assert "unreadable" in rows[2]["error"]["message"]


# --- files that cannot be written ------------------------------------------------------------


class _FillsUp(io.FileIO):
    """A file on a disk with `room` bytes left: a write past it is cut short, the next one
    raises ENOSPC, as a real full disk does."""

    def __init__(self, path: Path, room: int) -> None:
        super().__init__(path, "ab")
        self.room = room

    def write(self, data: Any) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        data = bytes(data)[: self.room]
        self.room -= len(data)
        written = super().write(data)
        return written or 0


def fills_up_after(room: int) -> Callable[[Path], io.FileIO]:
    return lambda path: _FillsUp(path, room)


async def test_a_full_disk_stops_the_run_and_the_rerun_completes_every_row(
    tmp_path: Path, schema_file: Path
) -> None:
    write_rows(tmp_path / "in.jsonl", 40)
    config = config_for(tmp_path, schema_file)
    with pytest.raises(FatalRunError) as stopped:
        await run_job(config, backends=[TestBackend()], opener=fills_up_after(3000))
    message = str(stopped.value)
    assert "No space left on device" in message
    assert str(config.output_path) in message
    assert "kept" in message and "rerun" in message
    summary = json.loads(config.summary_path.read_text())
    assert "No space left on device" in summary["fatal"]
    kept = config.output_path.read_bytes()
    assert 0 < kept.count(b"\n") < 40
    rerun = await run_job(config, backends=[TestBackend()])
    rows = read_jsonl(config.output_path)
    assert sorted(r["id"] for r in rows) == list(range(40))
    assert all(r["status"] == "ok" for r in rows)
    assert rerun.rows.skipped == kept.count(b"\n")


async def test_an_error_in_any_task_is_one_fatal_error_not_a_group(
    tmp_path: Path, schema_file: Path
) -> None:
    def broken(path: Path) -> io.FileIO:
        raise RuntimeError("the opener broke")

    write_rows(tmp_path / "in.jsonl", 3)
    config = config_for(tmp_path, schema_file)
    with pytest.raises(FatalRunError, match="unexpected error in the writer: RuntimeError"):
        await run_job(config, backends=[TestBackend()], opener=broken)
    assert "the opener broke" in json.loads(config.summary_path.read_text())["fatal"]


@pytest.mark.parametrize(
    ("output", "says"),
    [("a-file/in.out.jsonl", "cannot write"), ("a-folder", "is a folder")],
)
def test_an_output_that_cannot_be_opened_is_one_message_and_exit_2(
    tmp_path: Path,
    schema_file: Path,
    fake_ollama: FakeOllama,
    capsys: pytest.CaptureFixture[str],
    output: str,
    says: str,
) -> None:
    path = write_rows(tmp_path / "in.jsonl", 3)
    (tmp_path / "a-file").write_text("")  # a file where a folder should be
    (tmp_path / "a-folder").mkdir()  # a folder where the output file should be
    assert run_cli(path, fake_ollama.url, "-o", str(tmp_path / output), model=MODEL) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [error] = [line for line in err.splitlines() if " ERROR " in line]
    assert says in error and output.split("/")[0] in error


# --- a real full disk: a small tmpfs ------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, where the test may mount one (root on Linux); skipped elsewhere."""
    import os
    import subprocess

    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_real_full_disk_exits_2_and_the_rerun_after_freeing_space_completes(
    tmp_path: Path,
    schema_file: Path,
    fake_ollama: FakeOllama,
    small_disk: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import subprocess

    path = write_rows(tmp_path / "in.jsonl", 400)  # about 150 KB of output rows
    output = small_disk / "in.out.jsonl"
    argv = ["-o", str(output), "--summary", str(tmp_path / "summary.json")]
    assert run_cli(path, fake_ollama.url, *argv, model=MODEL) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [error] = [line for line in err.splitlines() if " ERROR " in line]
    assert "No space left on device" in error and "kept" in error
    assert "No space left on device" in json.loads((tmp_path / "summary.json").read_text())["fatal"]
    subprocess.run(["mount", "-o", "remount,size=1m", str(small_disk)], check=True)
    assert run_cli(path, fake_ollama.url, *argv, model=MODEL) == 0
    rows = read_jsonl(output)
    assert sorted(r["id"] for r in rows) == list(range(400))


def test_a_read_only_disk_exits_2_with_one_message(
    tmp_path: Path,
    schema_file: Path,
    fake_ollama: FakeOllama,
    small_disk: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import subprocess

    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    path = write_rows(tmp_path / "in.jsonl", 3)
    assert (
        run_cli(path, fake_ollama.url, "-o", str(small_disk / "out" / "in.out.jsonl"), model=MODEL)
        == 2
    )
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [error] = [line for line in err.splitlines() if " ERROR " in line]
    assert "Read-only file system" in error


def test_cli_main_never_raises_an_exception_group(
    tmp_path: Path, schema_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A host that is not there: the pool's failure reaches the user as one message."""
    path = write_rows(tmp_path / "in.jsonl", 2)
    argv = ["run", str(path), "--model", "m", "--schema", str(schema_file), "-q", *FAST_RETRIES]
    code = main([*argv, "--host", "http://127.0.0.1:9", "--max-attempts", "1"])
    assert code in (1, 2)
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("schema", [{"$schema": None}, {"$schema": "x"}, {"pattern": "["}])
def test_a_schema_jsonschema_cannot_use_is_refused_before_the_run(
    tmp_path: Path, schema: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    path = write_rows(tmp_path / "in.jsonl", 1)
    assert run_cli(path, "http://127.0.0.1:9", model=MODEL) == 2
    [error] = [line for line in capsys.readouterr().err.splitlines() if " ERROR " in line]
    assert "is not a valid JSON Schema" in error
