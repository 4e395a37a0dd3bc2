from __future__ import annotations

from batch.idset import IdSet, Sighting


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
