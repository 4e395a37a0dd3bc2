"""Input lines -> rows ready to send, or the reason a line cannot be sent.

A bad line never stops the run: it becomes a `Row` carrying a `BadInput` failure, and is written
to the output as an error row like any other failure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic_core

from batch.backends.base import ChatRequest, Format
from batch.backends.ollama_options import options_problem
from batch.errors import BadInput, ConfigError
from batch.images import ImagePolicy, image_refs
from batch.schema import OutputSchema

RowId = str | int
ROLES = frozenset({"system", "user", "assistant", "tool"})


@dataclass(slots=True)
class Row:
    line: int
    id: RowId
    request: ChatRequest | None = None
    failure: BadInput | None = None
    has_id: bool = True  # False when the line could not be read far enough to know its id
    # The row's own reply format (OpenAI `response_format`), replacing the run's schema.
    own_schema: bool = False
    schema: OutputSchema | None = None
    seq: int = 0  # the row's place among the rows sent this run, for ordered output


def id_key(row_id: RowId) -> str:
    """One spelling per id, so that 7 and "7" stay different rows."""
    return f"i{row_id}" if isinstance(row_id, int) else f"s{row_id}"


@dataclass(frozen=True, slots=True)
class RowBuilder:
    """Turns one line into a `Row` under the run's model, template, system prompt and options."""

    model: str | None
    options: dict[str, Any]
    template: str | None = None
    system: str | None = None
    format: Format | None = None
    images: ImagePolicy = field(default_factory=lambda: ImagePolicy(Path(".")))
    # One file holds one kind of row; the first row decides (see `_check_kind`).
    _first: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def build(self, line: int, raw: bytes) -> Row:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return _bad(line, f"line {line} is not valid UTF-8 (byte {exc.start}): re-encode it")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            return _bad(line, f"line {line} is not valid JSON: {exc.msg} (column {exc.colno})")
        if not isinstance(data, dict):
            kind = type(data).__name__.replace("dict", "object").replace("list", "array")
            return _bad(line, f"line {line} is a JSON {kind}, not an object")
        if is_openai_request(data):
            return self._openai_row(line, data)
        if mixed := self._check_kind(line, "native"):
            return _bad(line, mixed)
        row_id = _given_id(data, default=line)
        if isinstance(row_id, bool) or not isinstance(row_id, str | int):
            return _bad(line, f"line {line}: id must be a string or an integer, not {row_id!r}")
        try:
            return Row(line, row_id, request=self._request(line, data))
        except BadInput as failure:
            return Row(line, row_id, failure=failure)

    def _request(self, line: int, data: dict[str, Any]) -> ChatRequest:
        model = data.get("model", self.model)
        if not isinstance(model, str) or not model:
            if "model" in data:
                raise BadInput(f"line {line}: model must be a non-empty string")
            raise ConfigError(f"line {line} names no model and none was given: pass --model NAME")
        options = data.get("options")
        if options is not None and not isinstance(options, dict):
            raise BadInput(f"line {line}: options must be an object of Ollama options")
        if options and (problem := options_problem(options)) is not None:
            raise BadInput(f"line {line}: {problem}")
        system = data.get("system", self.system)
        if system is not None and not isinstance(system, str):
            raise BadInput(f"line {line}: system must be a string")
        messages = self._messages(line, data, system)
        if "images" in data:
            self._attach_row_images(line, data["images"], messages)
        merged = {**self.options, **options} if options else self.options
        return ChatRequest(model=model, messages=messages, format=self.format, options=merged)

    def _messages(
        self, line: int, data: dict[str, Any], system: str | None
    ) -> list[dict[str, Any]]:
        if "messages" in data:
            messages = data["messages"]
            if not isinstance(messages, list) or not messages:
                raise BadInput(f"line {line}: messages must be a non-empty array")
            messages = [self._message_images(line, i, m) for i, m in enumerate(messages)]
            for i, message in enumerate(messages):
                if not (
                    isinstance(message, dict)
                    and message.get("role") in ROLES
                    and isinstance(message.get("content", ""), str)
                ):
                    raise BadInput(
                        f"line {line}: messages[{i}] needs a role (system, user, assistant or "
                        "tool) and a string content"
                    )
            if system is not None and messages[0].get("role") != "system":
                messages = [{"role": "system", "content": system}, *messages]
            return messages
        prompt = self._prompt(line, data)
        head = [{"role": "system", "content": system}] if system is not None else []
        return [*head, {"role": "user", "content": prompt}]

    def _prompt(self, line: int, data: dict[str, Any]) -> str:
        if self.template is not None:
            try:
                return self.template.format_map(data)
            except KeyError as exc:
                raise BadInput(
                    f"line {line}: the template uses field {exc.args[0]!r}, which this row lacks"
                ) from None
            except (IndexError, AttributeError, ValueError, TypeError) as exc:
                raise BadInput(f"line {line}: cannot fill the template: {exc}") from None
        prompt = data.get("prompt")
        if prompt is None:
            raise BadInput(f"line {line}: the row has neither 'prompt' nor 'messages'")
        if not isinstance(prompt, str):
            raise BadInput(f"line {line}: prompt must be a string")
        return prompt

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
        self._check_kind(line, "OpenAI Batch" if openai else "native")  # the first line decides
        row_id = data.get("custom_id") if openai else _given_id(data, default=None)
        return None if isinstance(row_id, bool) or not isinstance(row_id, str | int) else row_id

    def _openai_row(self, line: int, data: dict[str, Any]) -> Row:
        from batch.formats.openai_in import openai_row

        if mixed := self._check_kind(line, "OpenAI Batch"):
            return _bad(line, mixed)
        custom_id = data.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            return _bad(line, f"line {line}: an OpenAI Batch request needs a custom_id string")
        try:
            return openai_row(self, line, custom_id, data)
        except BadInput as failure:
            return Row(line, custom_id, failure=failure)

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

    def _message_images(self, line: int, index: int, message: Any) -> Any:
        """A native message's own `images` (Ollama's spelling) as refs, read before sending."""
        if isinstance(message, dict) and "images" in message:
            where = f"messages[{index}].images"
            return {**message, "images": image_refs(line, message["images"], where, self.images)}
        return message

    def _attach_row_images(self, line: int, values: Any, messages: list[dict[str, Any]]) -> None:
        """A row's `images` go with its last user message."""
        refs = image_refs(line, values, "images", self.images)
        for i in range(len(messages) - 1, -1, -1):
            if messages[i]["role"] == "user":
                messages[i] = {**messages[i], "images": [*messages[i].get("images", ()), *refs]}
                return
        raise BadInput(f"line {line}: images need a user message to go with")


def is_openai_request(data: dict[str, Any]) -> bool:
    """An OpenAI Batch request line: `{"custom_id", "method", "url", "body"}`. Native rows may
    carry `body` and `url` as template data (a scraped page and its address), so it takes
    `body` with `method`, or with an API path as `url`."""
    url = data.get("url")
    return "body" in data and (
        "method" in data or (isinstance(url, str) and url.startswith("/v1/"))
    )


def _article(kind: str) -> str:
    return f"an {kind}" if kind[0] in "AEIOU" else f"a {kind}"


def _given_id(data: dict[str, Any], default: Any) -> Any:
    return data.get("id", data.get("custom_id", default))


def _bad(line: int, message: str) -> Row:
    """A line unusable before its id is known: the line number stands in for the id."""
    return Row(line, line, failure=BadInput(message), has_id=False)
