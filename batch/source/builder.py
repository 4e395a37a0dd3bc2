"""Input lines -> rows ready to send, or the reason a line cannot be sent.

A line is decoded and parsed here, then built by the native or the OpenAI builder (`native_in`,
`openai_in`), which name the field at fault; the line number is added here, once. A bad line
never stops the run: it becomes a `Row` carrying a `BadInput` failure, written to the
output as an error row like any other failure.
"""

from __future__ import annotations

import json
from typing import Any

import pydantic_core

from batch.core.errors import BadInput, ConfigError
from batch.core.jsontext import (
    Unreadable,
    has_lone_surrogate,
    loads,
    may_hold_lone_surrogates,
    without_lone_surrogates,
)
from batch.core.rows import LineId, Row, RowDefaults, RowId
from batch.source.native_in import native_request
from batch.source.openai_in import is_openai_request, openai_request

NATIVE, OPENAI = "native", "OpenAI Batch"


class RowBuilder:
    """Turns one line into a `Row` under the run's defaults. One file holds one kind of row;
    its first row decides (see `_check_kind`)."""

    def __init__(self, defaults: RowDefaults) -> None:
        self.defaults = defaults
        self._first: dict[str, int] = {}

    @property
    def native(self) -> bool:
        """The file's first row, read already, is a native one (not an OpenAI request)."""
        return NATIVE in self._first

    def build(self, line: int, raw: bytes) -> Row:
        """The line's row. A row without an id, and one whose id cannot be read, is known by
        its line number (`LineId`)."""
        data = _object(line, raw)
        by_line = LineId(line)
        if isinstance(data, BadInput):
            return Row(line, by_line, failure=data, has_id=False)
        openai = is_openai_request(data)
        if mixed := self._check_kind(line, OPENAI if openai else NATIVE):
            return Row(line, by_line, failure=BadInput(mixed), has_id=False)
        row_id = data.get("custom_id") if openai else _given_id(data, default=by_line)
        if openai and (not isinstance(row_id, str) or not row_id):
            failure = BadInput(f"line {line}: an OpenAI Batch request needs a custom_id string")
            return Row(line, by_line, failure=failure, has_id=False)
        if isinstance(row_id, bool) or not isinstance(row_id, str | int):
            failure = BadInput(
                f"line {line}: id must be a string or an integer, not {_json(row_id)}"
            )
            return Row(line, by_line, failure=failure, has_id=False)
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
        """The id `build` gives the line's row (its `LineId` when it names none), read
        without building its request: resume skips most lines. None when the line has no
        usable id (not a JSON object, an id neither a string nor an integer). The file's first
        line still sets its kind."""
        try:
            data: Any = pydantic_core.from_json(raw)  # a few times faster than json.loads
        except ValueError:  # not JSON, not UTF-8, too deep, a lone surrogate: read as `build`
            data = _object(line, raw)
        if not isinstance(data, dict):
            return None
        openai = is_openai_request(data)
        self._check_kind(line, OPENAI if openai else NATIVE)  # the first line decides
        row_id = data.get("custom_id") if openai else _given_id(data, default=LineId(line))
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
        # A byte-order mark starts any line of files joined with `cat`: read past it.
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        return BadInput(f"line {line} is not valid UTF-8 (byte {exc.start}): re-encode it")
    try:
        data = loads(text, finite=False)  # NaN in a row's data never reaches the output
    except json.JSONDecodeError as exc:
        return BadInput(f"line {line} is not valid JSON: {exc.msg} (column {exc.colno})")
    except Unreadable as exc:
        return BadInput(f"line {line} {exc}")
    if not isinstance(data, dict):
        kind = type(data).__name__.replace("dict", "object").replace("list", "array")
        return BadInput(f"line {line} is a JSON {kind}, not an object")
    if may_hold_lone_surrogates(raw):
        return _sendable(line, data)
    return data


def _sendable(line: int, data: dict[str, Any]) -> dict[str, Any] | BadInput:
    """Lone surrogates cannot be sent (nor written): in text they become U+FFFD; an id that
    holds one is refused, since an id is written back as it was read, to join on."""
    for key in ("id", "custom_id"):
        if isinstance(value := data.get(key), str) and has_lone_surrogate(value):
            return BadInput(
                f"line {line}: its {key} {value!a} holds a lone UTF-16 surrogate, which is "
                "not Unicode text: fix the id in the input"
            )
    fixed: dict[str, Any] = without_lone_surrogates(data)
    return fixed


def _json(value: Any) -> str:
    """A value as the input spells it (`null`, `true`, `1.5`), not as Python does."""
    try:
        return json.dumps(value, ensure_ascii=False)[:80]
    except ValueError:  # NaN, which the input spells as Python does
        return repr(value)


def _article(kind: str) -> str:
    return f"an {kind}" if kind[0] in "AEIOU" else f"a {kind}"


def _given_id(data: dict[str, Any], default: Any) -> Any:
    return data.get("id", data.get("custom_id", default))
