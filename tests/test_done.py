"""Reading an earlier output's done rows in blocks agrees with reading it a line at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from batch.core.digest import input_digest
from batch.core.errors import ConfigError
from batch.core.idset import IdSet
from batch.sink.done import BLOCK, collect_done
from batch.sink.records import RecordCodec, encode_line

FINGERPRINT = "0123456789abcdef"


def line(row_id: Any, status: str = "ok", digest: bool = True, **extra: Any) -> bytes:
    record: dict[str, Any] = {"id": row_id, "line": 1, "status": status}
    record |= {"output": {"label": "pos"}} if status == "ok" else {"error": {"type": "x"}}
    record |= {"attempts": 1, **extra, "elapsed_s": 0.1, "config": FINGERPRINT}
    if digest:
        record["input_digest"] = input_digest(repr(row_id).encode())
    return encode_line(record)


def one_at_a_time(codec: RecordCodec, block: bytes) -> list[tuple[str, int] | None]:
    return [codec.read_done(Path("out"), n, raw) for n, raw in enumerate(block.splitlines(True))]


def test_a_block_of_ok_lines_reads_as_its_lines_do() -> None:
    codec = RecordCodec(FINGERPRINT)
    block = b"".join(
        [line(12), line("r1"), line("é ü"), line(-3), line(0), line("a,b"), line(7, digest=False)]
    )
    found = codec.ok_keys_at_a_glance(block)
    assert found == one_at_a_time(codec, block)
    assert found is not None and [key for key, _ in found][:4] == ["i12", "sr1", "sé ü", "i-3"]
    assert found[-1][1] == 0 and all(digest for _, digest in found[:-1])


@pytest.mark.parametrize(
    "odd",
    [
        line(5, status="error"),
        line('q"x'),  # an escaped id
        line(5)[:-9] + b"\n",  # not JSON
        line(5).replace(FINGERPRINT.encode(), b"fedcba9876543210"),  # other settings
    ],
)
def test_a_block_with_any_other_line_is_left_to_the_line_reader(odd: bytes) -> None:
    block = line(1) + odd + line(2)
    assert RecordCodec(FINGERPRINT).ok_keys_at_a_glance(block) is None
    assert RecordCodec(FINGERPRINT, "openai").ok_keys_at_a_glance(line(1)) is None


def test_an_ok_line_holding_a_record_like_one_reads_as_its_line_does() -> None:
    codec = RecordCodec(FINGERPRINT)
    block = line(1) + line(5, output={"id": 9, "line": 2, "status": "ok"}) + line(2)
    found = codec.ok_keys_at_a_glance(block)
    assert found == one_at_a_time(codec, block) and [k for k, _ in found or ()][1] == "i5"


def test_collect_done_drops_failed_and_cut_lines_and_reports_repeated_ids(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    long = line("long", note="x" * (2 * BLOCK))  # longer than a block
    many = [line(i) for i in range(3 * BLOCK // len(line(0)))]  # several blocks
    out.write_bytes(b"".join([*many, line("e", status="error"), long, line(3), line("cut")[:-9]]))
    done = IdSet()
    found = collect_done(out, RecordCodec(FINGERPRINT), done)
    assert len(done) == len(many) + 1  # "long" and the others; 3 was among them
    assert "slong" in done and "se" not in done and "scut" not in done
    assert list(found.dropped) == [len(many) + 1, len(many) + 4]
    assert found.repeated == {"i3"}


def test_collect_done_refuses_a_line_batch_did_not_write(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(line(1) + b'{"hello": "world"}\n')
    with pytest.raises(ConfigError, match="line 2 is not a row written by batch"):
        collect_done(out, RecordCodec(FINGERPRINT), IdSet())


def test_ids_the_line_reader_cannot_read_are_left_to_it() -> None:
    codec = RecordCodec(FINGERPRINT)
    huge = b'{"id":-' + b"1" * 5000 + b',"line":1,"status":"ok","config":"0123456789abcdef"}\n'
    assert codec.read_done(Path("out"), 1, huge) is None  # past Python's digits limit: runs again
    assert codec.ok_keys_at_a_glance(huge) is None
    assert codec.ok_keys_at_a_glance(line(-(10**17))) == one_at_a_time(codec, line(-(10**17)))
