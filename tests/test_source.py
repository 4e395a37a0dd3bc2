"""The row source on a rerun: what it leaves out at a glance, and how soon it stops."""

from __future__ import annotations

from pathlib import Path

import anyio

from batch.core.digest import short_of_line
from batch.core.idset import IdSet
from batch.core.rows import Row, RowDefaults
from batch.core.stats import RunStats
from batch.source.builder import RowBuilder
from batch.source.row_source import RowSource


def done_table(lines: list[bytes], ids: range) -> IdSet:
    """The table an earlier output holding `ids` (those lines, as labelled then) leaves."""
    done = IdSet()
    for n in ids:
        done.add(f"i{n}", short_of_line(lines[n]))
    return done


async def test_a_stop_ends_the_reading_within_a_chunk(tmp_path: Path) -> None:
    lines = [b'{"id": %d, "prompt": "row %d"}' % (n, n) for n in range(20_000)]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    stats = RunStats()
    done = done_table(lines, range(1, 20_000))  # row 0 is new
    source = RowSource(path, RowBuilder(RowDefaults(model="m", options={})), done, stats)
    stopping = anyio.Event()
    sent: list[Row] = []
    send, receive = anyio.create_memory_object_stream[Row]()
    async with anyio.create_task_group() as tg:
        tg.start_soon(source.feed, send, stopping)
        async with receive:
            async for row in receive:
                sent.append(row)
                stopping.set()  # as a signal would, once the first row is on its way
    assert [row.id for row in sent] == [0]
    assert not source.read_all
    assert 0 < stats.skipped < 5_000  # the rest of the chunk at most, not the whole file


async def test_every_done_row_is_left_out_and_only_changed_and_new_rows_are_sent(
    tmp_path: Path,
) -> None:
    lines = [b'{"id": %d, "prompt": "row %d"}' % (n, n) for n in range(9_000)]
    done = done_table(lines, range(8_000))
    lines[4_321] = b'{"id": 4321, "prompt": "row 4321, edited"}'
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    stats = RunStats()
    source = RowSource(path, RowBuilder(RowDefaults(model="m", options={})), done, stats)
    send, receive = anyio.create_memory_object_stream[Row](10_000)
    await source.feed(send, anyio.Event())
    async with receive:
        sent = [row async for row in receive]
    assert [row.id for row in sent] == [4_321, *range(8_000, 9_000)]
    assert [row.id for row in sent if row.replaces] == [4_321]  # its line replaces the old one
    assert (stats.skipped, source.changed_met, source.read_all) == (7_999, 1, True)
