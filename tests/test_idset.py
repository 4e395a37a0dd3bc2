from __future__ import annotations

from batch.idset import IdSet


def test_add_reports_new_and_repeated_keys_across_growth() -> None:
    ids = IdSet()
    keys = [f"s{i}" for i in range(5000)] + [f"i{i}" for i in range(5000)]
    assert all(ids.add(k) for k in keys)
    assert len(ids) == 10000
    assert not any(ids.add(k) for k in keys)
    assert all(k in ids for k in keys)
    assert "s5000" not in ids and "i-1" not in ids
