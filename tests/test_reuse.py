"""Labels true to their inputs (issue 13): changed rows, duplicates, the shared cache, and one
run per output. Through the real `ollama` client against the fake server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from batch.cli import main
from batch.core.errors import ConfigError
from batch.run.config import JobConfig
from batch.run.pipeline import run_job
from batch.sink.lock import hold_outputs, lock_path
from batch.testing import FakeOllama, Fault
from tests.conftest import output_by_id, read_jsonl, run_cli, summary_of

SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": ["positive", "negative", "neutral"]}},
    "required": ["label"],
}


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    with FakeOllama(models=["m"]) as server:
        yield server


@pytest.fixture
def job(tmp_path: Path) -> Callable[..., Path]:
    """Writes `in.jsonl` from {id: prompt} (and the schema beside it)."""
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))

    def make(rows: dict[Any, str], name: str = "in.jsonl") -> Path:
        path = tmp_path / name
        lines = [json.dumps({"id": i, "prompt": p}) for i, p in rows.items()]
        path.write_text("".join(line + "\n" for line in lines))
        return path

    return make


def sent_prompts(fake: FakeOllama) -> list[str]:
    return [r["messages"][-1]["content"] for r in fake.requests]


def strip_digests(out: Path) -> None:
    """Rewrites `out` as batch wrote outputs before input digests existed."""
    old = [{k: v for k, v in r.items() if k != "input_digest"} for r in read_jsonl(out)]
    out.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in old))


# ---- changed, added and removed rows ------------------------------------------------------------


def test_a_rerun_labels_changed_and_new_rows_and_keeps_removed_ones(
    job: Callable[..., Path], fake: FakeOllama
) -> None:
    path = job({f"r{i}": f"text {i}" for i in range(5)})
    assert run_cli(path, fake.url) == 0
    before = output_by_id(path)
    fake.requests.clear()
    # r3 edited, r1 removed, r5 added.
    path = job(
        {"r0": "text 0", "r2": "text 2", "r3": "text 3, edited", "r4": "text 4", "r5": "new"}
    )
    assert run_cli(path, fake.url) == 0
    assert sorted(sent_prompts(fake)) == ["new", "text 3, edited"]
    rows = output_by_id(path)  # asserts one line per id
    assert set(rows) == {"r0", "r1", "r2", "r3", "r4", "r5"}
    assert rows["r3"]["input_digest"] != before["r3"]["input_digest"]
    assert rows["r0"] == before["r0"] and rows["r1"] == before["r1"]
    counts = summary_of(path)["rows"]
    assert (counts["ok"], counts["skipped"], counts["changed"]) == (2, 3, 1)
    assert (counts["not_in_input"], counts["pruned"]) == (1, 0)

    fake.requests.clear()
    assert run_cli(path, fake.url, "--prune") == 0
    assert fake.requests == []
    assert set(output_by_id(path)) == {"r0", "r2", "r3", "r4", "r5"}
    counts = summary_of(path)["rows"]
    assert (counts["skipped"], counts["not_in_input"], counts["pruned"]) == (5, 1, 1)


def test_a_changed_row_a_stop_leaves_unlabelled_keeps_its_line_until_it_is_labelled(
    job: Callable[..., Path], fake: FakeOllama
) -> None:
    path = job({"a": "one", "b": "two", "c": "three"})
    assert run_cli(path, fake.url) == 0
    before = output_by_id(path)
    path = job({"a": "one, edited", "b": "two, edited", "c": "three"})
    # The source reads both changed rows; the budget lets one be labelled again.
    assert run_cli(path, fake.url, "--max-requests", "1", "-c", "1") == 3
    rows = output_by_id(path)  # one line per id: none lost, none twice
    relabelled = [i for i in "ab" if rows[i] != before[i]]
    assert len(relabelled) == 1 and rows["c"] == before["c"]
    counts = summary_of(path)["rows"]
    assert (counts["ok"], counts["changed"], counts["not_in_input"]) == (1, 1, 0)
    assert run_cli(path, fake.url) == 0  # the next run labels the other one again
    rows = output_by_id(path)
    assert all(rows[i] != before[i] for i in "ab")
    assert summary_of(path)["rows"]["changed"] == 1


def test_rows_without_ids_resume_by_line_number(tmp_path: Path, fake: FakeOllama) -> None:
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    path = tmp_path / "in.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    assert run_cli(path, fake.url) == 0
    assert run_cli(path, fake.url) == 0
    assert fake.request_count == 2  # the rerun found both done
    path.write_text('{"prompt": "a"}\n{"prompt": "b, edited"}\n')
    assert run_cli(path, fake.url) == 0
    assert sent_prompts(fake)[2:] == ["b, edited"]
    assert sorted(output_by_id(path)) == [1, 2]  # one line each, ids from line numbers
    assert summary_of(path)["rows"]["changed"] == 1


def test_a_repeated_id_is_refused_on_its_later_line_whether_it_changed_or_not(
    tmp_path: Path, fake: FakeOllama
) -> None:
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    path = tmp_path / "in.jsonl"
    rows = [("r1", "a"), ("r2", "b"), ("r3", "c")]
    path.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in rows))
    assert run_cli(path, fake.url) == 0
    # r2 changed, then as it was; r3 as it was, then changed.
    rows = [("r1", "a"), ("r2", "b2"), ("r2", "b"), ("r3", "c"), ("r3", "c2")]
    path.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in rows))
    fake.requests.clear()
    assert run_cli(path, fake.url) == 1
    assert sent_prompts(fake) == ["b2"]
    records = read_jsonl(tmp_path / "in.out.jsonl")
    refused = sorted((r["id"], r["line"], r["error"]["message"]) for r in records if "error" in r)
    assert [(row_id, line) for row_id, line, _ in refused] == [("r2", 3), ("r3", 5)]
    assert [message.split(";")[0] for *_, message in refused] == [
        "line 3: id 'r2' was already used by line 2",
        "line 5: id 'r3' was already used by line 4",
    ]


def test_a_rerun_of_many_rows_finds_the_few_that_changed(
    job: Callable[..., Path], fake: FakeOllama
) -> None:
    rows = {i: f"text {i}" for i in range(3000)}  # several read chunks
    path = job(rows)
    assert run_cli(path, fake.url) == 0
    fake.requests.clear()
    path = job(rows | {5: "edited", 2999: "edited too"} | {3000: "new"})
    assert run_cli(path, fake.url) == 0
    assert sorted(sent_prompts(fake)) == ["edited", "edited too", "new"]
    counts = summary_of(path)["rows"]
    assert (counts["skipped"], counts["changed"], counts["ok"]) == (2998, 2, 3)
    assert output_by_id(path)[2999]["line"] == 3000


def test_an_image_whose_bytes_changed_is_labelled_again(tmp_path: Path, fake: FakeOllama) -> None:
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
    (tmp_path / "cat.png").write_bytes(png)
    path = tmp_path / "in.jsonl"
    rows = [
        {"id": "a", "prompt": "no image"},
        {"id": "p", "prompt": "what?", "images": ["cat.png"]},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert run_cli(path, fake.url) == 0
    assert run_cli(path, fake.url) == 0
    assert fake.request_count == 2  # same lines, same image: done
    (tmp_path / "cat.png").write_bytes(png + b"\1")
    assert run_cli(path, fake.url) == 0
    assert fake.request_count == 3
    assert summary_of(path)["rows"]["changed"] == 1
    assert len(read_jsonl(tmp_path / "in.out.jsonl")) == 2


def test_rows_written_before_digests_are_kept_as_done(
    job: Callable[..., Path], fake: FakeOllama
) -> None:
    path = job({i: f"text {i}" for i in range(3)})
    assert run_cli(path, fake.url) == 0
    out = path.with_name("in.out.jsonl")
    strip_digests(out)
    path = job({0: "text 0", 1: "text 1, edited", 2: "text 2", 3: "text 3"})
    assert run_cli(path, fake.url) == 0
    assert sent_prompts(fake)[3:] == ["text 3"]  # only the new row: the old ones carry no digest
    assert summary_of(path)["rows"]["skipped"] == 3


@pytest.mark.parametrize("row_id", [0, -3, 5])
def test_a_broken_line_is_not_taken_for_a_done_row_from_before_digests(
    tmp_path: Path, fake: FakeOllama, row_id: int
) -> None:
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    path = tmp_path / "in.jsonl"
    first, done = '{"id": "first", "prompt": "a"}\n', f'{{"id": {row_id}, "prompt": "hi"}}\n'
    path.write_text(first + done)
    assert run_cli(path, fake.url) == 0
    out = path.with_name("in.out.jsonl")
    strip_digests(out)
    path.write_text(first + f'{{"id": {row_id}, "prompt": "truncat\n' + done)  # line 2 broken
    assert run_cli(path, fake.url) == 1
    errors = [r for r in read_jsonl(out) if r["status"] == "error"]
    assert [(r["line"], r["error"]["type"]) for r in errors] == [(2, "bad_input")]
    assert "not valid JSON" in errors[0]["error"]["message"]
    assert summary_of(path)["rows"]["skipped"] == 2  # line 3 is the row done before


def test_an_unreadable_digest_labels_its_row_again(
    job: Callable[..., Path], fake: FakeOllama
) -> None:
    path = job({"a": "one", "b": "two"})
    assert run_cli(path, fake.url) == 0
    out = path.with_name("in.out.jsonl")
    lines = out.read_text().splitlines(keepends=True)
    digest = json.loads(lines[1])["input_digest"]
    for edited in ("0123456789abcdeZ", digest[:8] + "-1234567", "12"):  # edited by hand
        out.write_text(lines[0] + lines[1].replace(digest, edited))
        fake.requests.clear()
        assert run_cli(path, fake.url) == 0
        assert len(fake.requests) == 1
        assert output_by_id(path)[json.loads(lines[1])["id"]]["input_digest"] == digest


def test_a_run_killed_before_taking_out_an_old_line_keeps_the_newer_one(
    job: Callable[..., Path], fake: FakeOllama
) -> None:
    path = job({"a": "one", "b": "two"})
    assert run_cli(path, fake.url) == 0
    out = path.with_name("in.out.jsonl")
    lines = out.read_text().splitlines(keepends=True)
    path = job({"a": "one", "b": "two, edited"})
    assert run_cli(path, fake.url) == 0
    newer = output_by_id(path)["b"]
    out.write_text("".join([*lines, json.dumps(newer, separators=(",", ":")) + "\n"]))
    fake.requests.clear()
    assert run_cli(path, fake.url) == 0  # as if killed between appending and taking out
    assert fake.requests == []
    assert output_by_id(path)["b"] == newer


# ---- identical requests -------------------------------------------------------------------------


def test_identical_requests_are_sent_once_and_copies_cost_nothing(
    job: Callable[..., Path], fake: FakeOllama
) -> None:
    path = job({"a": "same", "b": "other", "c": "same", "d": "same"})
    assert run_cli(path, fake.url) == 0
    assert sorted(sent_prompts(fake)) == ["other", "same"]
    rows = output_by_id(path)
    sender = next(i for i in "acd" if "same_as" not in rows[i])
    for copy in set("acd") - {sender}:
        assert rows[copy]["same_as"] == sender
        assert rows[copy]["output"] == rows[sender]["output"]
        assert rows[copy]["attempts"] == 0
        assert rows[copy]["usage"] == {"requests": 0, "input_tokens": 0, "output_tokens": 0}
    summary = summary_of(path)
    assert summary["requests_saved"] == {"duplicates": 2, "cache": 0}
    assert summary["usage"]["requests"] == 2 == summary["attempts"]


def test_a_failed_request_fails_its_copies(job: Callable[..., Path], fake: FakeOllama) -> None:
    fake.add_fault(Fault("prose", match="bad", times=None))
    path = job({"a": "bad one", "b": "bad one", "c": "fine"})
    assert run_cli(path, fake.url, "--max-attempts", "1") == 1
    rows = output_by_id(path)
    assert rows["a"]["status"] == rows["b"]["status"] == "error"
    assert rows["a"]["error"]["type"] == rows["b"]["error"]["type"] == "validation"
    assert fake.request_count == 2  # one for the pair, one for "fine"


def test_no_dedup_sends_every_row(job: Callable[..., Path], fake: FakeOllama) -> None:
    path = job({"a": "same", "b": "same"})
    assert run_cli(path, fake.url, "--no-dedup") == 0
    assert fake.request_count == 2
    assert all("same_as" not in r for r in output_by_id(path).values())


# ---- the cache ----------------------------------------------------------------------------------


def test_the_cache_serves_another_file_with_other_ids(
    job: Callable[..., Path], fake: FakeOllama, tmp_path: Path
) -> None:
    cache = str(tmp_path / "replies.sqlite")
    first = job({"a": "alpha", "b": "beta"}, name="first.jsonl")
    assert run_cli(first, fake.url, "--cache", cache) == 0
    second = job({"x": "beta", "y": "alpha", "z": "gamma"}, name="second.jsonl")
    assert run_cli(second, fake.url, "--cache", cache) == 0
    assert sent_prompts(fake)[2:] == ["gamma"]
    rows = {r["id"]: r for r in read_jsonl(tmp_path / "second.out.jsonl")}
    assert rows["x"]["cached"] is True and rows["y"]["cached"] is True and "cached" not in rows["z"]
    assert rows["x"]["usage"] == {"requests": 0, "input_tokens": 0, "output_tokens": 0}
    summary = json.loads((tmp_path / "second.out.summary.json").read_text())
    assert summary["requests_saved"] == {"duplicates": 0, "cache": 2}
    assert main(["cache", cache]) == 0


def test_the_cache_lets_rows_move_between_shards(
    job: Callable[..., Path], fake: FakeOllama, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCH_CACHE", str(tmp_path / "c.sqlite"))
    path = job({f"r{i}": f"text {i}" for i in range(12)})
    for k in range(2):
        assert run_cli(path, fake.url, "--shard", f"{k}/2") == 0
    assert fake.request_count == 12
    for k in range(3):
        assert run_cli(path, fake.url, "--shard", f"{k}/3") == 0
    assert fake.request_count == 12  # every row of the new layout came from the cache
    merged = [f"in.shard-{k}-of-3.out.jsonl" for k in range(3)]
    assert main(["merge", str(path), *(str(tmp_path / m) for m in merged)]) == 0


def test_failed_rows_are_not_cached(
    job: Callable[..., Path], fake: FakeOllama, tmp_path: Path
) -> None:
    cache = str(tmp_path / "c.sqlite")
    fake.add_fault(Fault("prose", match="bad", times=None))
    assert run_cli(job({"a": "bad"}), fake.url, "--cache", cache, "--max-attempts", "1") == 1
    fake.clear_faults()
    other = job({"b": "bad"}, name="other.jsonl")
    assert run_cli(other, fake.url, "--cache", cache) == 0
    assert fake.request_count == 2


def test_the_cache_command_prunes_and_clears(
    job: Callable[..., Path], fake: FakeOllama, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "c.sqlite"
    assert run_cli(job({"a": "one", "b": "two"}), fake.url, "--cache", str(cache)) == 0
    assert main(["cache", str(cache)]) == 0
    assert ": 2 entries" in capsys.readouterr().out
    assert main(["cache", str(cache), "--prune-older-than", "30d"]) == 0
    assert ": 2 entries" in capsys.readouterr().out
    assert main(["cache", str(cache), "--clear"]) == 0
    assert ": 0 entries" in capsys.readouterr().out
    assert main(["cache", str(cache), "--prune-older-than", "soon"]) == 2


@pytest.mark.parametrize(
    "content", [b"not a database at all\n" * 100, b"SQLite format 3\0" + b"\xff" * 4000]
)
def test_a_file_that_is_not_a_cache_stops_the_run_and_keeps_the_output(
    job: Callable[..., Path], fake: FakeOllama, tmp_path: Path, content: bytes
) -> None:
    path = job({"a": "one", "b": "two"})
    assert run_cli(path, fake.url) == 0
    out = path.with_name("in.out.jsonl")
    kept = out.read_bytes()
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(content)
    path = job({"a": "one", "b": "two, edited", "c": "three"})
    assert run_cli(path, fake.url, "--cache", str(bad)) == 2
    assert out.read_bytes() == kept
    assert fake.request_count == 2
    assert main(["cache", str(bad)]) == 2


# ---- one run per output -------------------------------------------------------------------------


async def test_two_runs_started_together_one_is_turned_away(
    job: Callable[..., Path], tmp_path: Path
) -> None:
    path = job({i: f"text {i}" for i in range(40)})
    with FakeOllama(models=["m"], latency=0.02) as server:
        config = JobConfig(
            input=path, model="m", hosts=(server.url,), schema_ref=str(tmp_path / "schema.json")
        )
        outcomes: list[Any] = []

        async def one() -> None:
            try:
                outcomes.append(await run_job(config))
            except ConfigError as exc:
                outcomes.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            tg.start_soon(one)
    [refused] = [o for o in outcomes if isinstance(o, ConfigError)]
    assert f"pid {os.getpid()}" in str(refused) and "another run is writing" in str(refused)
    assert len(output_by_id(path)) == 40
    assert not lock_path(path.with_name("in.out.jsonl")).exists()  # released at the end


def test_a_held_output_refuses_runs_and_merges_before_touching_files(
    job: Callable[..., Path], fake: FakeOllama, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = job({"a": "one"})
    assert run_cli(path, fake.url) == 0
    out = path.with_name("in.out.jsonl")
    kept = out.read_bytes()
    job({"a": "one, edited"})
    with hold_outputs([out]):
        assert run_cli(path, fake.url) == 2
        assert main(["merge", str(path), str(out), "-o", str(tmp_path / "m.jsonl")]) == 2
    assert out.read_bytes() == kept and fake.request_count == 1
    err = capsys.readouterr().err
    assert err.count("another run is writing") == 2 and f"pid {os.getpid()} on " in err


def test_shards_run_side_by_side(job: Callable[..., Path], tmp_path: Path) -> None:
    path = job({i: f"text {i}" for i in range(6)})
    with hold_outputs([tmp_path / "in.shard-0-of-2.out.jsonl"]), FakeOllama(models=["m"]) as f:
        assert run_cli(path, f.url, "--shard", "1/2") == 0


@pytest.mark.slow
def test_a_run_killed_while_holding_the_lock_never_blocks_the_next(
    job: Callable[..., Path], tmp_path: Path
) -> None:
    path = job({i: f"text {i}" for i in range(200)})
    lock = lock_path(tmp_path / "in.out.jsonl")
    with FakeOllama(models=["m"], latency=0.2, slots=1) as server:
        argv = [sys.executable, "-m", "batch", "run", str(path), "--model", "m", "-q"]
        argv += ["--host", server.url, "--schema", str(tmp_path / "schema.json"), "-c", "1"]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        child = subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL)
        try:
            server.wait_for_requests(2, timeout=60)
            assert json.loads(lock.read_text())["pid"] == child.pid
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
        assert lock.exists()  # left behind by the kill, but no longer locked
        assert run_cli(path, server.url) == 0
    assert len(output_by_id(path)) == 200
