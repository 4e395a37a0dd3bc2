"""`--review-below P`: the ok rows whose least confident label is under P, for a person to check.

One JSON object a line, `{"id": …, "output": {…}, "confidence": {…}}` (and `"id_from_line":
true` after the id of a row that gives none, as in the output), appended as rows are
written, so a resumed run adds its own rows to those of the runs before it (`--overwrite`
starts it over with the output). Created by its first row.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

from batch.core.rows import ID_FROM_LINE, LineId, RowResult
from batch.sink.output import OutputWriter
from batch.sink.records import encode_line


class ReviewFile:
    def __init__(self, path: Path, below: float) -> None:
        self.path = path
        self.below = below
        self.rows = 0
        self._writer = OutputWriter(path, lazy=True)

    def wants(self, result: RowResult) -> bool:
        """A label below P: the least confident, or (a panel's) the least agreed on."""
        lowest = min((result.confidence or {}).values(), default=1.0)
        return min([lowest, *(result.agreement or {}).values()]) < self.below

    async def write(self, results: list[RowResult]) -> None:
        await self._writer.write([encode_line(review_record(r)) for r in results])
        self.rows += len(results)

    def as_record(self) -> dict[str, Any]:
        return {"below": self.below, "rows": self.rows, "file": str(self.path)}

    async def __aenter__(self) -> ReviewFile:
        await self._writer.__aenter__()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._writer.__aexit__(kind, exc, tb)


def review_record(result: RowResult) -> dict[str, Any]:
    record: dict[str, Any] = {"id": result.row.id}
    if isinstance(result.row.id, LineId):
        record[ID_FROM_LINE] = True
    record |= {"output": result.output, "confidence": result.confidence}
    if result.agreement is not None:
        record["agreement"] = result.agreement
    return record
