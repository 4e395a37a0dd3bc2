"""The run's row ids, about 18 bytes an id (measured), for files of millions of rows.

A Python `set` of strings costs about 100 bytes an id. This keeps only each id's 63-bit hash in
an open-addressing table (a flat `array`), so two ids whose hashes collide count as one: about
one chance in 10^5 on a file of ten million rows. The lowest bit of each entry says whether the
reader has met the id in this run, so one table serves both resume (ids already done in the
output) and duplicate detection (ids met earlier in the input). Beside each id, 32 bits: until
the reader meets the id, the input digest its output line recorded (0: none, a line written
before digests), so that resume tells a changed row from a done one; from then on, the input
line it was met on (0: past 2^32), so that a repeat names the line that used the id first.
"""

from __future__ import annotations

import enum
from array import array

_EMPTY = 0
_SEEN = 1
_MASK63 = (1 << 63) - 1
_MIN_SIZE = 1024
_MAX_LOAD = 0.8  # linear probing stays short up to here; a fuller table would probe long runs
_MAX_LINE = 0xFFFFFFFF  # the most a line number beside an id holds


class Sighting(enum.Enum):
    NEW = "new"  # first time this id appears, and not done before
    DONE = "done"  # done in an earlier run; first time this run
    REPEAT = "repeat"  # already met earlier in this run's input


class IdSet:
    def __init__(self, expected: int = 0) -> None:
        """`expected`: how many ids are likely to come; a good guess spares a resize."""
        size = _size_for(expected)
        self._table = array("Q", bytes(8 * size))
        # Made with the first digest or line recorded: a table that only `add`s ids, with no
        # digest, needs none.
        self._beside: array[int] | None = None
        self._count = 0
        self.last_digest = 0  # the digest beside the id `sight` last found done
        self.first_line = 0  # the line beside the id `sight` last found repeated (0: unknown)

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key: str) -> bool:
        return self._find(_entry(key))[1] != _EMPTY

    def reserve(self, expected: int) -> None:
        """Makes room for `expected` ids in all, in one resize rather than several; none when
        they already fit (a resize briefly holds two tables)."""
        if expected > _MAX_LOAD * len(self._table):
            self._resize(_size_for(expected))

    def add(self, key: str, digest: int = 0) -> bool:
        """Records `key` as done in an earlier run, with its input `digest`; False when it was
        there already (then the later line's digest is kept: it is the newer label)."""
        # `_entry` and `_find`, inlined: resume calls this once a done row.
        entry = ((hash(key) & _MASK63) or 1) << 1
        table = self._table
        size = len(table)
        slot = (entry >> 1) % size
        while (current := table[slot]) != _EMPTY and current | _SEEN != entry | _SEEN:
            slot = slot + 1 if slot + 1 < size else 0
        if digest and self._beside is None:
            self._beside = array("I", bytes(4 * size))
        if self._beside is not None:
            self._beside[slot] = digest
        if current != _EMPTY:
            return False
        self._insert(slot, entry)
        return True

    def was_seen(self, key: str) -> bool:
        return bool(self._find(_entry(key))[1] & _SEEN)

    def sight_unchanged(self, key: str, digest: int, line: int = 0) -> bool:
        """Sights `key` on `line` when it was done with this very input `digest`; False,
        touching nothing, otherwise, and when no digest was recorded (a line from before
        digests): then only a full reading of the line can say that it is that row. Resume's
        fast path, inlined as `add` is."""
        entry = ((hash(key) & _MASK63) or 1) << 1
        table = self._table
        size = len(table)
        slot = (entry >> 1) % size
        while (current := table[slot]) != _EMPTY and current | _SEEN != entry | _SEEN:
            slot = slot + 1 if slot + 1 < size else 0
        if current == _EMPTY or current & _SEEN:
            return False
        beside = self._beside
        if beside is None or beside[slot] != digest:
            return False
        table[slot] = current | _SEEN
        beside[slot] = line if line <= _MAX_LINE else 0
        return True

    def sight(self, key: str, line: int = 0) -> Sighting:
        """The reader met `key` on `line` of the input: is it new, done before, or a repeat
        (then `first_line` is the line that met it first)?"""
        entry = _entry(key)
        slot, current = self._find(entry)
        if current == _EMPTY:
            self._note_line(slot, line)  # before the insert, which may move every slot
            self._insert(slot, entry | _SEEN)
            return Sighting.NEW
        beside = self._beside
        if current & _SEEN:
            self.first_line = beside[slot] if beside is not None else 0
            return Sighting.REPEAT
        self._table[slot] = current | _SEEN
        self.last_digest = beside[slot] if beside is not None else 0
        self._note_line(slot, line)
        return Sighting.DONE

    def _note_line(self, slot: int, line: int) -> None:
        if self._beside is None:
            if not line:
                return
            self._beside = array("I", bytes(4 * len(self._table)))
        self._beside[slot] = line if line <= _MAX_LINE else 0

    def _find(self, entry: int) -> tuple[int, int]:
        """The slot holding `entry` (seen bit ignored) or the empty slot where it would go."""
        table, size = self._table, len(self._table)
        slot = (entry >> 1) % size
        while True:
            current = table[slot]
            if current == _EMPTY or current | _SEEN == entry | _SEEN:
                return slot, current
            slot += 1
            if slot == size:
                slot = 0

    def _insert(self, slot: int, entry: int) -> None:
        self._table[slot] = entry
        self._count += 1
        if self._count > _MAX_LOAD * len(self._table):
            self._resize(2 * len(self._table))

    def _resize(self, size: int) -> None:
        old, self._table = self._table, array("Q", bytes(8 * size))
        old_beside = self._beside
        if old_beside is not None:
            self._beside = array("I", bytes(4 * size))
        table, beside = self._table, self._beside
        for index, entry in enumerate(old):
            if entry != _EMPTY:
                slot = (entry >> 1) % size
                while table[slot] != _EMPTY:
                    slot = slot + 1 if slot + 1 < size else 0
                table[slot] = entry
                if beside is not None and old_beside is not None:
                    beside[slot] = old_beside[index]


def _size_for(expected: int) -> int:
    return max(_MIN_SIZE, int(expected / (_MAX_LOAD * 0.9)) + 1)


def _entry(key: str) -> int:
    # str hashes are salted per process, which is fine: the table lives for one run.
    # The hash fills the upper 63 bits; never zero, so no entry looks like an empty slot.
    return ((hash(key) & _MASK63) or 1) << 1
