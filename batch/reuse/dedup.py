"""Rows that ask the same question get one answer: identical requests within a run are sent
once (`same_as`), and with `--cache` an answer from any earlier run is taken (`cached`).

`ReusingLabeller` wraps the labeller. A row's request key (`core.digest.request_key`) is looked
up among the requests in flight (a copy waits for the one sent), then among this run's earlier
answers, then in the cache; only then is it sent. Copies carry no usage and 0 attempts, so usage
totals stay what the servers reported; a failed request fails its copies the same way. This
run's answers are kept in a private temporary SQLite file (deleted when the run ends), so the
memory of a run does not grow with its distinct requests.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

import anyio

from batch.core.digest import request_key
from batch.core.errors import RowFailure
from batch.core.rows import Row, RowId, RowResult
from batch.labelling.labeller import Labeller
from batch.reuse.cache import Answer, AnswerCache


class CopiedFailure(RowFailure):
    """The failure of the row whose request a copy shared, as that row's output recorded it."""

    def __init__(self, record: dict[str, Any]) -> None:
        details = {k: v for k, v in record.items() if k not in ("type", "message")}
        super().__init__(str(record.get("message", "")), **details)
        self.kind = str(record.get("type", "error"))


@dataclass
class _Sent:
    """A request in flight: its copies wait for `done`."""

    row_id: RowId
    done: anyio.Event = field(default_factory=anyio.Event)
    result: RowResult | None = None


class RunAnswers:
    """This run's results by request key, in a temporary file SQLite deletes on close."""

    def __init__(self) -> None:
        self._db = sqlite3.connect("", isolation_level=None)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE answers (key BLOB PRIMARY KEY, sent TEXT, result TEXT)")

    def get(self, key: bytes) -> tuple[RowId, dict[str, Any]] | None:
        found = self._db.execute("SELECT sent, result FROM answers WHERE key = ?", (key,))
        row = found.fetchone()
        return None if row is None else (json.loads(row[0]), json.loads(row[1]))

    def put(self, key: bytes, sent: RowId, result: RowResult) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO answers VALUES (?, ?, ?)",
            (key, json.dumps(sent), _dumps(_as_stored(result))),
        )

    def close(self) -> None:
        self._db.close()


class ReusingLabeller:
    def __init__(
        self,
        labeller: Labeller,
        *,
        dedup: bool,
        cache: AnswerCache | None = None,
        salt: str = "",
    ) -> None:
        self._labeller = labeller
        self._cache = cache
        self._salt = salt  # settings outside the request that shape a reply (think)
        self._answers = RunAnswers() if dedup else None
        self._in_flight: dict[bytes, _Sent] = {}

    def close(self) -> None:
        if self._answers is not None:
            self._answers.close()

    async def label(self, row: Row) -> RowResult:
        if row.request is None or row.failure is not None:
            return await self._labeller.label(row)
        if self._answers is None and self._cache is None:
            return await self._labeller.label(row)
        schema = row.schema.json_schema if row.schema else None
        key = request_key(row.request, schema, row.images, self._salt)
        if self._answers is not None:
            if (sent := self._in_flight.get(key)) is not None:
                await sent.done.wait()
                if sent.result is not None:
                    return _copy(row, sent.row_id, sent.result)
            elif (earlier := self._answers.get(key)) is not None:
                return _restored(row, *earlier)
        return await self._send(row, key)

    async def _send(self, row: Row, key: bytes) -> RowResult:
        """Asks the cache, else the labeller; copies that come meanwhile wait for this."""
        sent = _Sent(row.id)
        if self._answers is not None:
            self._in_flight[key] = sent
        try:
            result = None
            if self._cache is not None and (answer := await self._cache.get(key)) is not None:
                result = RowResult(row, answer.output, content=answer.content, cached=True)
                result.done_reason = answer.done_reason
            if result is None:
                result = await self._labeller.label(row)
                if self._cache is not None and result.failure is None:
                    assert row.request is not None
                    await self._cache.put(key, row.request.model, _answer(result))
            sent.result = result
            if self._answers is not None:
                self._answers.put(key, row.id, result)
            return result
        finally:
            self._in_flight.pop(key, None)
            sent.done.set()


def _answer(result: RowResult) -> Answer:
    return Answer(result.output, result.content, result.done_reason)


def _copy(row: Row, sent: RowId, result: RowResult) -> RowResult:
    """`row`'s result from another row's: the same answer (or failure), none of its cost."""
    copy = RowResult(row, result.output, result.failure, content=result.content)
    copy.done_reason = result.done_reason
    if result.cached:
        copy.cached = True
    else:
        copy.same_as = sent
    return copy


def _as_stored(result: RowResult) -> dict[str, Any]:
    stored: dict[str, Any] = {
        "output": result.output,
        "content": result.content,
        "done_reason": result.done_reason,
        "cached": result.cached,
    }
    if result.failure is not None:
        stored["failure"] = result.failure.as_record()
    return stored


def _restored(row: Row, sent: RowId, stored: dict[str, Any]) -> RowResult:
    failure = CopiedFailure(stored["failure"]) if "failure" in stored else None
    original = RowResult(row, stored["output"], failure, content=stored["content"])
    original.done_reason = stored["done_reason"]
    original.cached = stored["cached"]
    return _copy(row, sent, original)


def _dumps(value: Any) -> str:
    # ASCII: a lone surrogate from a reply is stored escaped, not refused by SQLite's UTF-8.
    return json.dumps(value, separators=(",", ":"), default=str)
