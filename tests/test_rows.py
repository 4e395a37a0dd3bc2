"""Input lines -> rows: every kind of bad line becomes a row failure naming its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from batch.core.errors import ConfigError
from batch.core.rows import RowDefaults
from batch.source.builder import RowBuilder
from batch.source.reader import count_lines, read_chunks

BUILDER = RowBuilder(RowDefaults(model="m", options={"temperature": 0}))


def test_prompt_row_becomes_a_user_message() -> None:
    row = BUILDER.build(1, b'{"id": "a", "prompt": "hello"}')
    assert row.failure is None and row.request is not None
    assert row.id == "a"
    assert row.request.messages == [{"role": "user", "content": "hello"}]
    assert row.request.model == "m"
    assert row.request.options == {"temperature": 0}


def test_custom_id_model_system_and_options_come_from_the_row() -> None:
    raw = b'{"custom_id": 7, "prompt": "p", "model": "x", "system": "s", "options": {"seed": 1}}'
    row = BUILDER.build(3, raw)
    assert row.request is not None
    assert row.id == 7
    assert row.request.model == "x"
    assert row.request.messages[0] == {"role": "system", "content": "s"}
    assert row.request.options == {"temperature": 0, "seed": 1}


def test_row_without_id_takes_its_line_number() -> None:
    assert BUILDER.build(12, b'{"prompt": "p"}').id == 12


def test_messages_are_used_as_given_with_the_run_system_prompt_first() -> None:
    builder = RowBuilder(RowDefaults(model="m", options={}, system="be terse"))
    row = builder.build(1, b'{"messages": [{"role": "user", "content": "hi"}]}')
    assert row.request is not None
    assert row.request.messages == [
        {"role": "system", "content": "be terse"},
        {"role": "user", "content": "hi"},
    ]


def test_template_fills_from_row_fields() -> None:
    builder = RowBuilder(RowDefaults(model="m", options={}, template="Review {id}: {text}"))
    row = builder.build(1, b'{"id": 7, "text": "great"}')
    assert row.request is not None
    assert row.request.messages[-1]["content"] == "Review 7: great"


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"not json", "line 4 is not valid JSON"),
        (b'{"id": 1, "prompt": "x"', "line 4 is not valid JSON"),
        (b"[1, 2]", "line 4 is a JSON array, not an object"),
        (b'"text"', "line 4 is a JSON str, not an object"),
        (b"\xff\xfe{}", "line 4 is not valid UTF-8"),
        (b'{"id": 1}', "neither 'prompt' nor 'messages'"),
        (b'{"id": 1.5, "prompt": "x"}', "id must be a string or an integer"),
        (b'{"id": true, "prompt": "x"}', "id must be a string or an integer"),
        (b'{"id": 1, "prompt": 5}', "prompt must be a string"),
        (b'{"id": 1, "messages": []}', "messages must be a non-empty array"),
        (b'{"id": 1, "messages": [{"content": "x"}]}', "messages[0] needs a role"),
        (b'{"id": 1, "prompt": "x", "options": [1]}', "options must be an object"),
        (b'{"id": 1, "prompt": "x", "model": ""}', "model must be a non-empty string"),
    ],
)
def test_bad_lines_are_row_failures_that_name_the_line(raw: bytes, says: str) -> None:
    row = BUILDER.build(4, raw)
    assert row.request is None
    assert row.failure is not None
    assert row.failure.kind == "bad_input"
    assert says in row.failure.message
    assert "line 4" in row.failure.message


def test_a_missing_template_field_is_a_bad_row() -> None:
    builder = RowBuilder(RowDefaults(model="m", options={}, template="{text} / {lang}"))
    row = builder.build(2, b'{"id": 1, "text": "x"}')
    assert row.failure is not None
    assert "field 'lang'" in row.failure.message


def test_no_model_anywhere_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="pass --model"):
        RowBuilder(RowDefaults(model=None, options={})).build(1, b'{"prompt": "x"}')


async def test_reader_skips_blank_lines_keeps_numbers_and_drops_a_bom(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n\n   \n{"b": 2}\n{"c": 3}')
    chunks = [chunk async for chunk in read_chunks(path)]
    lines = [(n, raw) for first, chunk in chunks for n, raw in enumerate(chunk, first)]
    assert [(n, raw) for n, raw in lines if raw.strip()] == [
        (1, b'{"a": 1}\r'),
        (4, b'{"b": 2}'),
        (5, b'{"c": 3}'),
    ]
    assert count_lines(path) == 5


async def test_chunks_number_lines_across_chunk_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    written = [
        b"" if n % 7 == 0 else b'{"id": %d, "prompt": "%s"}' % (n, b"x" * (n % 50))
        for n in range(1, 9000)
    ]
    path.write_bytes(b"\n".join(written))  # no line end after the last line
    numbered = [
        (n, raw) async for first, chunk in read_chunks(path) for n, raw in enumerate(chunk, first)
    ]
    assert len({first async for first, _ in read_chunks(path)}) > 2  # several chunks
    assert numbered == list(enumerate(written, start=1))
