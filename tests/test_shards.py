"""Shards: a stable split by id, read from the scheduler's environment, and merged back."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from batch.cli import main
from batch.core.errors import ConfigError
from batch.core.rows import id_key
from batch.run.config import load_config
from batch.source.shards import parse_shard, shard_from_environ, shard_of
from batch.testing import FakeOllama
from tests.conftest import write_rows


def ids_in(path: Path) -> list[Any]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def run_shard(path: Path, fake: FakeOllama, shard: str, *extra: str) -> int:
    argv = ["run", str(path), "--model", "m", "--host", fake.url, "-q", "--shard", shard]
    return main([*argv, *extra])


def test_a_row_shard_is_pinned_by_its_id_alone() -> None:
    # Pinned values: a change of hash would split a half-done sharded run differently.
    assert [shard_of(f"i{n}", 4) for n in range(8)] == [3, 2, 2, 1, 3, 1, 1, 1]
    assert shard_of("sdoc-1", 4) == 1
    assert {shard_of(f"s{n}", 3) for n in range(100)} == {0, 1, 2}
    assert shard_of("i7", 1) == 0


def test_shard_values_and_the_scheduler_environment() -> None:
    assert str(parse_shard("2/8")) == "2/8"
    for bad in ("8/8", "1", "a/b", "-1/4"):
        with pytest.raises(ValueError, match="K/N"):
            parse_shard(bad)
    assert shard_from_environ({"JOB_COMPLETION_INDEX": "3"}, 4) == "3/4"
    assert shard_from_environ({"JOB_COMPLETION_INDEX": "3"}, None) is None  # N is not published
    slurm = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "2"}
    assert shard_from_environ(slurm, None) == "3/4"
    assert shard_from_environ({}, 4) is None


def test_the_config_names_each_shard_output_apart(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "in.jsonl", [1])
    config = load_config({"input": path, "shards": 4}, {"JOB_COMPLETION_INDEX": "1"})
    assert config.sharding.shard == "1/4"
    assert config.output_path.name == "in.shard-1-of-4.out.jsonl"
    assert config.summary_path.name == "in.shard-1-of-4.out.summary.json"
    with pytest.raises(ConfigError, match="--shard K/4"):
        load_config({"input": path, "shards": 4}, {})
    with pytest.raises(ConfigError, match="disagree"):
        load_config({"input": path, "shards": 4, "shard": "1/3"}, {})


def test_shards_split_the_rows_whatever_their_order(tmp_path: Path) -> None:
    ids: list[Any] = [*range(40), *(f"doc-{n}" for n in range(20))]
    shuffled = random.Random(7).sample(ids, len(ids))
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    with FakeOllama(models=["m"]) as fake:
        for folder, order in ((first, ids), (second, shuffled)):
            path = write_rows(folder / "in.jsonl", order)
            for k in range(3):
                assert run_shard(path, fake, f"{k}/3") == 0
    for k in range(3):
        name = f"in.shard-{k}-of-3.out.jsonl"
        assert sorted(map(str, ids_in(first / name))) == sorted(map(str, ids_in(second / name)))


def test_shards_resume_and_merge_into_one_line_per_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_rows(tmp_path / "in.jsonl", list(range(50)))
    with FakeOllama(models=["m"]) as fake:
        for k in range(4):
            assert run_shard(path, fake, f"{k}/4") == 0
        sent = fake.request_count
        assert run_shard(path, fake, "2/4") == 0  # a rerun resumes: nothing left to send
        assert fake.request_count == sent
    for k in range(4):  # by the hash of each row's own id (0 included), not of its line
        shard_ids = ids_in(tmp_path / f"in.shard-{k}-of-4.out.jsonl")
        assert {shard_of(id_key(i), 4) for i in shard_ids} == {k}
    assert main(["merge", str(path)]) == 0
    merged = tmp_path / "in.out.jsonl"
    assert sorted(ids_in(merged)) == list(range(50))
    summary = json.loads((tmp_path / "in.out.summary.json").read_text())
    assert summary["check"]["exactly_once"] is True
    assert summary["rows"] == {"total": 50, "ok": 50, "error": 0}
    assert summary["complete"] is True
    assert "50 rows merged of 50" in capsys.readouterr().err


def test_a_resumed_shard_of_openai_requests_finds_its_rows_by_custom_id(tmp_path: Path) -> None:
    def request(n: int) -> str:
        body = {"messages": [{"role": "user", "content": f"text {n}"}]}
        # `id` leads the line but is not the row's id: custom_id is.
        line = {"id": f"x{n}", "custom_id": f"r{n}", "method": "POST", "body": body}
        return json.dumps(line | {"url": "/v1/chat/completions"}) + "\n"

    path = tmp_path / "in.jsonl"
    path.write_text("".join(request(n) for n in range(10)))
    with FakeOllama(models=["m"]) as fake:
        for k in range(2):
            assert run_shard(path, fake, f"{k}/2", "--output-format", "openai") == 0
        path.write_text("".join(request(n) for n in range(40)))  # rows added
        for k in range(2):  # resumed: each line is glanced at
            assert run_shard(path, fake, f"{k}/2", "--output-format", "openai") == 0
        assert fake.request_count == 40
    labelled = [
        json.loads(line)["custom_id"]
        for k in range(2)
        for line in (tmp_path / f"in.shard-{k}-of-2.out.jsonl").read_text().splitlines()
    ]
    assert sorted(labelled) == sorted(f"r{n}" for n in range(40))


@pytest.mark.parametrize("head", [b'{"id": -3, broken', b'{"id": 8, broken'])
def test_a_resumed_shard_reports_a_broken_line_as_a_fresh_run_does(
    tmp_path: Path, head: bytes
) -> None:
    lines = [b'{"id": "r%d", "prompt": "text %d"}\n' % (n, n) for n in range(6)]
    lines.insert(3, head + b"\n")  # not JSON: its line number places it, not its head
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(lines))

    def errors() -> list[int]:
        outputs = [tmp_path / f"in.shard-{k}-of-2.out.jsonl" for k in range(2)]
        records = [json.loads(line) for out in outputs for line in out.read_text().splitlines()]
        return [r["line"] for r in records if r["status"] == "error"]

    with FakeOllama(models=["m"]) as fake:
        assert {run_shard(path, fake, f"{k}/2") for k in range(2)} == {0, 1}
        assert errors() == [4]
        assert {run_shard(path, fake, f"{k}/2") for k in range(2)} == {0, 1}  # resumed
        assert errors() == [4]
        assert fake.request_count == 6


def test_a_shard_resuming_a_shared_output_counts_only_its_own_rows(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "in.jsonl", 10)
    out = tmp_path / "shared.out.jsonl"
    mine = [i for i in range(10) if shard_of(id_key(i), 2) == 0]
    with FakeOllama(models=["m"]) as fake:
        argv = ["run", str(path), "--model", "m", "--host", fake.url, "-q", "--output", str(out)]
        assert main(argv) == 0  # every row, in one file
        assert run_shard(path, fake, "0/2", "--output", str(out), "--prune") == 0
    rows = json.loads(out.with_name("shared.out.summary.json").read_text())["rows"]
    others = 10 - len(mine)  # in the output, but not in this shard's input
    assert (rows["skipped"], rows["not_in_input"], rows["pruned"]) == (len(mine), others, others)
    assert sorted(ids_in(out)) == mine


def test_merge_names_missing_and_duplicated_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_rows(tmp_path / "in.jsonl", list(range(30)))
    with FakeOllama(models=["m"]) as fake:
        for shard in ("0/2", "1/2", "0/3"):  # 0/3 overlaps both halves
            assert run_shard(path, fake, shard) == 0
    halves = [tmp_path / f"in.shard-{k}-of-2.out.jsonl" for k in range(2)]
    lines = halves[1].read_text().splitlines(keepends=True)
    lost = json.loads(lines[0])["id"]
    halves[1].write_text("".join(lines[1:]))
    assert main(["merge", str(path), *map(str, halves)]) == 2
    err = capsys.readouterr().err
    assert f"1 rows missing: {lost!r}" in err
    third = tmp_path / "in.shard-0-of-3.out.jsonl"
    assert main(["merge", str(path), *map(str, halves), str(third)]) == 2
    assert "in more than one output" in capsys.readouterr().err


def test_merge_without_shard_outputs_says_what_it_looked_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_rows(tmp_path / "in.jsonl", [1])
    assert main(["merge", str(path)]) == 2
    assert "in.shard-0-of-4.out.jsonl" in capsys.readouterr().err


def test_merge_refuses_leftover_shards_of_another_count_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_rows(tmp_path / "in.jsonl", list(range(30)))
    with FakeOllama(models=["m"]) as fake:
        for shard in ("0/2", "0/3", "1/3", "2/3"):  # 0/2 is left from an earlier split
            assert run_shard(path, fake, shard) == 0
    capsys.readouterr()
    assert main(["merge", str(path)]) == 2
    err = capsys.readouterr().err
    assert "the shard outputs of 2 splits: into 2 (in.shard-0-of-2.out.jsonl); into 3 (" in err
    assert not (tmp_path / "in.out.jsonl").exists()
    assert not (tmp_path / "in.out.summary.json").exists()
    threes = [str(tmp_path / f"in.shard-{k}-of-3.out.jsonl") for k in range(3)]
    assert main(["merge", str(path), *threes]) == 0  # named, they merge
    assert "30 rows merged of 30" in capsys.readouterr().err


def test_merge_names_a_missing_shard_and_writes_no_merged_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_rows(tmp_path / "in.jsonl", list(range(30)))
    merged = tmp_path / "in.out.jsonl"
    with FakeOllama(models=["m"]) as fake:
        for shard in ("0/3", "1/3"):
            assert run_shard(path, fake, shard) == 0
        capsys.readouterr()
        assert main(["merge", str(path)]) == 2
        err = capsys.readouterr().err
        assert "shard 2 of 3" in err and "--shard 2/3" in err
        assert not merged.exists()
        assert run_shard(path, fake, "2/3") == 0
    assert main(["merge", str(path)]) == 0
    assert sorted(ids_in(merged)) == list(range(30))


def test_a_shard_count_of_zero_is_a_plain_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_rows(tmp_path / "in.jsonl", [1])
    assert main(["run", str(path), "--model", "m", "--shard", "1/0", "-q"]) == 2
    err = capsys.readouterr().err
    assert "--shard (from --shard): '1/0': N, the number of shards, is at least 1" in err
    assert "-1/0" not in err and "Value error" not in err


def test_merge_warns_of_a_repeated_id_and_keeps_rows_without_an_id_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "in.jsonl"
    # Ids 5 to 12 on lines 1 to 8; lines 9 to 12 give no id; line 13 repeats id 7.
    rows: list[dict[str, Any]] = [{"id": n, "prompt": f"row {n}"} for n in range(5, 13)]
    rows += [{"prompt": f"no id {n}"} for n in range(4)] + [{"id": 7, "prompt": "again"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with FakeOllama(models=["m"]) as fake:
        for k in range(2):
            run_shard(path, fake, f"{k}/2")
    capsys.readouterr()
    assert main(["merge", str(path)]) == 1  # every row there once; the repeat failed
    err = capsys.readouterr().err
    assert "13 rows merged of 13" in err
    assert "id 7 is on lines 3 and 13 of the input" in err
    merged = [json.loads(line) for line in (tmp_path / "in.out.jsonl").read_text().splitlines()]
    assert sorted(r["line"] for r in merged) == list(range(1, 14))
    for k in range(2):  # as batch wrote them before rows without an id were marked
        out = tmp_path / f"in.shard-{k}-of-2.out.jsonl"
        out.write_text(out.read_text().replace(',"id_from_line":true', ""))
    assert main(["merge", str(path)]) == 1
    assert "13 rows merged of 13" in capsys.readouterr().err
