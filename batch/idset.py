"""A set of row ids in 16 bytes an id, for files of millions of rows.

A Python `set` of strings costs about 100 bytes an id. This keeps only each id's 64-bit hash in
an open-addressing table (a flat `array`), so two ids whose hashes collide count as one: with
64-bit hashes that is about one chance in 10^8 on a file of ten million rows.
"""

from __future__ import annotations

from array import array

_EMPTY = 0
_MASK64 = (1 << 64) - 1


class IdSet:
    def __init__(self, capacity: int = 1024) -> None:
        size = 1 << max(10, (capacity * 2 - 1).bit_length())
        self._table = array("Q", bytes(8 * size))
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key: str) -> bool:
        return self._find(_key_hash(key))[1]

    def add(self, key: str) -> bool:
        """Adds `key`; False when it was there already."""
        h = _key_hash(key)
        slot, found = self._find(h)
        if found:
            return False
        self._table[slot] = h
        self._count += 1
        if self._count * 2 > len(self._table):
            self._grow()
        return True

    def _find(self, h: int) -> tuple[int, bool]:
        table, mask = self._table, len(self._table) - 1
        slot = h & mask
        while True:
            current = table[slot]
            if current == h:
                return slot, True
            if current == _EMPTY:
                return slot, False
            slot = (slot + 1) & mask

    def _grow(self) -> None:
        old = self._table
        self._table = array("Q", bytes(16 * len(old)))
        mask = len(self._table) - 1
        table = self._table
        for h in old:
            if h != _EMPTY:
                slot = h & mask
                while table[slot] != _EMPTY:
                    slot = (slot + 1) & mask
                table[slot] = h


def _key_hash(key: str) -> int:
    # str hashes are salted per process, which is fine: the table lives for one run.
    return (hash(key) & _MASK64) or 1
