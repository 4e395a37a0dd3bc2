"""`--cache FILE`: an SQLite database of accepted replies, shared by runs, files and shards.

Keyed by the request as sent and the schema its reply passed (`batch.core.digest.request_key`), so a
row of any file, id or shard layout that asks the same question takes the answer from here. Only
accepted replies go in: a failed row is never cached. Several processes share one file: WAL
journal (readers never wait for the writer) and a busy timeout for writers. A file that is not
a cache stops the run before any output is touched (`ConfigError`); one that breaks during the
run stops it as a fatal error, after the rows already labelled are written.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from batch.core.errors import ConfigError, FatalRunError

MAGIC = "batch-cache"
VERSION = "1"
BUSY_TIMEOUT_S = 60.0
SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
_SCHEMA = """
CREATE TABLE IF NOT EXISTS batch_cache (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS answers (
    key BLOB PRIMARY KEY, model TEXT, content TEXT, output TEXT NOT NULL, done_reason TEXT,
    created REAL NOT NULL, used REAL NOT NULL, hits INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class Answer:
    """An accepted reply: what a row's output needs, without the usage of asking."""

    output: Any
    content: str | None
    done_reason: str | None


class AnswerCache:
    """One connection, used from worker threads one call at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = open_cache(path)
        self._lock = threading.Lock()
        self._limiter = anyio.CapacityLimiter(1)

    async def get(self, key: bytes) -> Answer | None:
        return await anyio.to_thread.run_sync(self._get, key, limiter=self._limiter)

    async def put(self, key: bytes, model: str, answer: Answer) -> None:
        await anyio.to_thread.run_sync(self._put, key, model, answer, limiter=self._limiter)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _get(self, key: bytes) -> Answer | None:
        with self._lock, _broken(self.path):
            row = self._db.execute(
                "SELECT output, content, done_reason FROM answers WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                return None
            self._db.execute(
                "UPDATE answers SET hits = hits + 1, used = ? WHERE key = ?", (time.time(), key)
            )
            return Answer(json.loads(row[0]), row[1], row[2])

    def _put(self, key: bytes, model: str, answer: Answer) -> None:
        now = time.time()
        # ASCII: a lone surrogate from a reply is stored escaped, not refused by SQLite's UTF-8.
        output = json.dumps(answer.output, separators=(",", ":"))
        with self._lock, _broken(self.path):
            self._db.execute(
                "INSERT OR IGNORE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
                (key, model, answer.content, output, answer.done_reason, now, now),
            )


class _broken:
    """A database error during the run: the run stops (the sink still writes what is done)."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: Any) -> None:
        if isinstance(exc, sqlite3.Error):
            raise FatalRunError(f"cache {self._path} failed: {exc}") from exc


def open_cache(path: Path) -> sqlite3.Connection:
    """A connection to the cache at `path`, created when missing. Raises `ConfigError` for a
    file that is not a batch cache, or a damaged one."""
    if not _may_be_sqlite(path):
        raise ConfigError(
            f"{path} is not a batch cache (it is not an SQLite file): give the file a run "
            "writes with --cache (e.g. labels.cache), or a new name to start one"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"cannot open cache {path}: {exc}") from None
    try:
        _check(db, path)
    except BaseException:
        db.close()
        raise
    return db


def _may_be_sqlite(path: Path) -> bool:
    """False for a file that exists and is not SQLite (an input given by mistake): it is
    refused before SQLite opens it."""
    try:
        with path.open("rb") as file:
            head = file.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return True
    except OSError:
        return True  # SQLite's own error says what is wrong
    return not head or head == SQLITE_HEADER


def _check(db: sqlite3.Connection, path: Path) -> None:
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "batch_cache" not in tables:
            raise ConfigError(
                f"{path} is an SQLite database but not a batch cache: give the file a run "
                "writes with --cache, or a new name to start one"
            )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # in WAL: durable at checkpoints, never corrupt
        if not tables:
            db.executescript(_SCHEMA)
            db.execute("INSERT OR IGNORE INTO batch_cache VALUES ('magic', ?)", (MAGIC,))
            db.execute("INSERT OR IGNORE INTO batch_cache VALUES ('version', ?)", (VERSION,))
        found = dict(db.execute("SELECT name, value FROM batch_cache").fetchall())
        db.execute("SELECT count(*) FROM answers WHERE key = x''").fetchone()
    except sqlite3.DatabaseError as exc:
        raise ConfigError(
            f"cache {path} is damaged ({exc}): give another --cache file (a damaged batch "
            "cache can be removed: the next run starts a new one)"
        ) from None
    if found.get("magic") != MAGIC or found.get("version") != VERSION:
        raise ConfigError(f"cache {path} was written by another version of batch: delete it")


@dataclass(frozen=True)
class CacheStats:
    entries: int
    size_bytes: int
    hits: int
    entries_hit: int
    oldest: float | None
    newest: float | None

    def describe(self, path: Path) -> str:
        when = ""
        if self.oldest is not None and self.newest is not None:
            when = f", written {_date(self.oldest)} to {_date(self.newest)}"
        return (
            f"{path}: {self.entries} entries, {self.size_bytes / 1e6:.1f} MB, "
            f"{self.hits} hits ({self.entries_hit} entries used at least once){when}"
        )


def cache_stats(path: Path) -> CacheStats:
    db = open_cache(path)
    try:
        entries, hits, hit, oldest, newest = db.execute(
            "SELECT count(*), coalesce(sum(hits), 0), coalesce(sum(hits > 0), 0), "
            "min(created), max(created) FROM answers"
        ).fetchone()
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
    finally:
        db.close()
    wal = path.with_name(path.name + "-wal")
    size = pages * page_size + (wal.stat().st_size if wal.exists() else 0)
    return CacheStats(entries, size, hits, hit, oldest, newest)


def prune_cache(path: Path, *, older_than_s: float | None = None) -> int:
    """Removes entries not used for `older_than_s` seconds (all of them when None); returns
    how many went, and gives their space back to the file system."""
    db = open_cache(path)
    try:
        if older_than_s is None:
            removed = db.execute("DELETE FROM answers").rowcount
        else:
            cutoff = time.time() - older_than_s
            removed = db.execute("DELETE FROM answers WHERE used < ?", (cutoff,)).rowcount
        db.execute("VACUUM")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    return int(removed)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """`30d`, `12h`, `90m`, `45s`, `2w` -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if match is None:
        raise ConfigError(f"--prune-older-than {text!r}: write a number and a unit, as in 30d")
    return float(match[1]) * _UNITS[match[2]]


def _date(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp))
