"""Input lines -> rows ready to send, or the reason a line cannot be sent.

A line is decoded and parsed here, then built by the native or the OpenAI builder
(`batch.formats`), which name the field at fault; the line number is added here, once. A bad
line never stops the run: it becomes a `Row` carrying a `BadInput` failure, written to the
output as an error row like any other failure.
"""

from __future__ import annotations

import json
from typing import Any

import pydantic_core

from batch.errors import BadInput, ConfigError
from batch.formats.native_in import native_request
from batch.formats.openai_in import is_openai_request, openai_request
from batch.rows import Row, RowDefaults, RowId

NATIVE, OPENAI = "native", "OpenAI Batch"


class RowBuilder:
    """Turns one line into a `Row` under the run's defaults. One file holds one kind of row;
    its first row decides (see `_check_kind`)."""

    def __init__(self, defaults: RowDefaults) -> None:
        self.defaults = defaults
        self._first: dict[str, int] = {}

    def build(self, line: int, raw: bytes) -> Row:
        data = _object(line, raw)
        if isinstance(data, BadInput):
            return Row(line, line, failure=data, has_id=False)
        openai = is_openai_request(data)
        if mixed := self._check_kind(line, OPENAI if openai else NATIVE):
            return Row(line, line, failure=BadInput(mixed), has_id=False)
        row_id = data.get("custom_id") if openai else _given_id(data, default=line)
        if openai and (not isinstance(row_id, str) or not row_id):
            failure = BadInput(f"line {line}: an OpenAI Batch request needs a custom_id string")
            return Row(line, line, failure=failure, has_id=False)
        if isinstance(row_id, bool) or not isinstance(row_id, str | int):
            failure = BadInput(f"line {line}: id must be a string or an integer, not {row_id!r}")
            return Row(line, line, failure=failure, has_id=False)
        try:
            if openai:
                request, schema = openai_request(self.defaults, data)
            else:
                request, schema = native_request(self.defaults, data), self.defaults.schema
        except BadInput as failure:
            return Row(line, row_id, failure=failure.at_line(line))
        except ConfigError as problem:  # e.g. no model anywhere: every row would fail
            raise ConfigError(f"line {line} {problem}") from None
        return Row(line, row_id, request=request, schema=schema)

    def peek_id(self, line: int, raw: bytes) -> RowId | None:
        """A line's own id, read without building its request (resume skips most lines); None
        when the line has no usable id of its own. The file's first line still sets its kind."""
        try:
            data = pydantic_core.from_json(raw)  # a few times faster than json.loads
        except ValueError:  # not JSON, or not UTF-8
            return None
        if not isinstance(data, dict):
            return None
        openai = is_openai_request(data)
        self._check_kind(line, OPENAI if openai else NATIVE)  # the first line decides
        row_id = data.get("custom_id") if openai else _given_id(data, default=None)
        return None if isinstance(row_id, bool) or not isinstance(row_id, str | int) else row_id

    def _check_kind(self, line: int, kind: str) -> str | None:
        """None when `kind` is the file's kind (that of its first row), else why not."""
        if not self._first:
            self._first[kind] = line
        if kind in self._first:
            return None
        [(other, at)] = self._first.items()
        return (
            f"line {line} is {_article(kind)} row, but the file's first row (line {at}) is "
            f"{_article(other)} row: one file holds one kind of row, so split the file"
        )


def _object(line: int, raw: bytes) -> dict[str, Any] | BadInput:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadInput(f"line {line} is not valid UTF-8 (byte {exc.start}): re-encode it")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return BadInput(f"line {line} is not valid JSON: {exc.msg} (column {exc.colno})")
    if not isinstance(data, dict):
        kind = type(data).__name__.replace("dict", "object").replace("list", "array")
        return BadInput(f"line {line} is a JSON {kind}, not an object")
    return data


def _article(kind: str) -> str:
    return f"an {kind}" if kind[0] in "AEIOU" else f"a {kind}"


def _given_id(data: dict[str, Any], default: Any) -> Any:
    return data.get("id", data.get("custom_id", default))
