from __future__ import annotations

import json

from batch.core.digest import input_digest, key_at_a_glance, short, short_of_line
from batch.core.idset import IdSet, Sighting
from batch.core.rows import id_key


def test_add_reports_new_and_repeated_keys_across_growth() -> None:
    ids = IdSet()
    keys = [f"s{i}" for i in range(5000)] + [f"i{i}" for i in range(5000)]
    assert all(ids.add(k) for k in keys)
    assert len(ids) == 10000
    assert not any(ids.add(k) for k in keys)
    assert all(k in ids for k in keys)
    assert "s5000" not in ids and "i-1" not in ids


def test_sight_tells_new_done_and_repeated_ids_apart() -> None:
    ids = IdSet()
    done = [f"s{i}" for i in range(3000)]
    for key in done:
        ids.add(key)
    fresh = [f"i{i}" for i in range(3000)]
    # Interleaved, and enough of them to resize the table while the seen marks are set.
    assert [ids.sight(k) for pair in zip(done, fresh, strict=True) for k in pair] == [
        Sighting.DONE,
        Sighting.NEW,
    ] * 3000
    assert {ids.sight(k) for k in done + fresh} == {Sighting.REPEAT}
    assert len(ids) == 6000


def test_reserve_keeps_every_id() -> None:
    ids = IdSet()
    keys = [f"s{i}" for i in range(2000)]
    for key in keys[:1000]:
        ids.add(key)
    ids.reserve(100_000)
    for key in keys[1000:]:
        ids.sight(key)
    assert all(k in ids for k in keys)
    assert [ids.sight(k) for k in keys[:3]] == [Sighting.DONE] * 3


def test_the_table_keeps_each_ids_input_digest() -> None:
    ids = IdSet()
    assert ids.add("sa", 7) and ids.add("sb", 0) and ids.add("sc", 9)
    assert not ids.add("sc", 11)  # a later line of the same id: its digest wins
    assert ids.sight_unchanged("sa", 7)
    assert not ids.sight_unchanged("sa", 7)  # met already
    assert not ids.sight_unchanged("sb", 1234)  # no digest recorded: a glance cannot tell
    assert ids.sight("sb") is Sighting.DONE and ids.last_digest == 0
    assert not ids.sight_unchanged("sc", 9)
    assert ids.sight("sc") is Sighting.DONE and ids.last_digest == 11
    assert not ids.sight_unchanged("sd", 1)
    assert ids.was_seen("sa") and not ids.was_seen("sd")


def test_ids_at_a_glance_agree_with_the_parser() -> None:
    lines = [
        b'{"id": 12, "prompt": "x"}',
        b'{"id":"r1","prompt":"x"}',
        b'{"id": 0, "prompt": "x"}',
        b'{"id": -3, "prompt": "x"}',
        b'{"id": "\xc3\xa9", "prompt": "x"}',
        b'{"id": "a,b", "prompt": "x"}',
        b'{"id": "q\\"x", "prompt": "x"}',
        b'{"id": "\\u00e9", "prompt": "x"}',
        b'{"id": -0, "prompt": "x"}',
        b'{"id": 012, "prompt": "x"}',
        b'{"id": 1.5, "prompt": "x"}',
        b'{"id": "\xff", "prompt": "x"}',
        b'{"prompt": "x", "id": 4}',
    ]
    glanced = [key_at_a_glance(raw) for raw in lines]
    assert glanced[:6] == ["i12", "sr1", "i0", "i-3", "s\u00e9", "sa,b"]
    assert glanced[6:] == [None] * 7  # escaped, not JSON, not an int or str, not first
    for raw, key in zip(lines, glanced, strict=True):
        assert key is None or key == id_key(json.loads(raw)["id"]), raw


def test_a_lines_digest_at_a_glance_is_the_short_half_of_its_input_digest() -> None:
    lines = [b'{"id": 1, "prompt": "x"}', b'{"id": 1, "prompt": "x"}\r', b"", b"\xff" * 300]
    for raw in lines:
        assert short_of_line(raw) == short(input_digest(raw)), raw
    assert short_of_line(lines[0]) == short_of_line(lines[1])  # a CRLF file reads the same
    assert short_of_line(lines[0]) != short_of_line(b'{"id": 1, "prompt": "y"}')


def test_digests_recorded_after_digest_less_ids_survive_growth() -> None:
    ids = IdSet()
    for i in range(1500):
        ids.add(f"s{i}")  # lines from before digests: no digest array yet
    for i in range(1500, 6000):  # the first digest makes the array; growth keeps it
        ids.add(f"s{i}", i)
    assert not ids.sight_unchanged("s10", 99)  # no digest recorded
    assert ids.sight("s10") is Sighting.DONE and ids.last_digest == 0
    assert ids.sight_unchanged("s1700", 1700)
    assert not ids.sight_unchanged("s5999", 1)
    assert ids.sight("s5999") is Sighting.DONE and ids.last_digest == 5999
