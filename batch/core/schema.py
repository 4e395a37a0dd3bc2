"""The shape a result must have: loaded from `module:Class` (pydantic) or a JSON Schema file,
sent to Ollama as `format`, and checked again on the client, since the server's grammar
enforces syntax at best."""

from __future__ import annotations

import importlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import jsonschema
import pydantic

from batch.core.errors import Cause, ConfigError, InvalidOutput, SchemaUnusable
from batch.core.jsontext import Unreadable, loads

JsonSchema = dict[str, Any]


class OutputSchema(Protocol):
    @property
    def json_schema(self) -> JsonSchema: ...

    def validate(self, content: str) -> Any:
        """The reply as a JSON-ready value, or `InvalidOutput` saying what is wrong."""
        ...


@dataclass(frozen=True)
class PydanticSchema:
    model: type[pydantic.BaseModel]
    json_schema: JsonSchema

    def validate(self, content: str) -> Any:
        value = parse_json(content)
        try:
            return self.model.model_validate(value).model_dump(mode="json")
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors()
            )
            raise schema_violation(content, problems) from None


# Replies already found valid, by text: a label run's replies are a few texts over and over, and
# checking one against the schema costs more than the rest of reading it. Short texts only.
KNOWN_VALID_MAX = 4096
KNOWN_VALID_CHARS = 512


@dataclass(frozen=True)
class JsonSchemaFile:
    json_schema: JsonSchema
    validator: jsonschema.protocols.Validator
    _known_valid: set[str] = field(default_factory=set, compare=False, repr=False)

    def validate(self, content: str) -> Any:
        if content in self._known_valid:
            return json.loads(content)  # the same text passed every check below: read it again
        value = self._checked(content)
        if len(content) <= KNOWN_VALID_CHARS:
            if len(self._known_valid) >= KNOWN_VALID_MAX:
                self._known_valid.clear()
            self._known_valid.add(content)
        return value

    def _checked(self, content: str) -> Any:
        value = parse_json(content)
        try:
            errors = sorted(self.validator.iter_errors(value), key=lambda e: list(e.absolute_path))
        except RecursionError:  # a recursive schema walked deeper than Python's stack
            raise schema_violation(content, "(root): nested too deeply to check") from None
        except Exception as exc:  # e.g. a $ref that resolves nowhere
            raise SchemaUnusable(
                f"the schema cannot be applied to the reply: {type(exc).__name__}: {exc}",
                raw=content,
            ) from None
        if errors:
            problems = "; ".join(
                f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
                for e in errors[:5]
            )
            raise schema_violation(content, problems)
        return value


def parse_json(content: str) -> Any:
    text = content.strip()
    if text.startswith("```"):
        raise InvalidOutput(
            Cause.VALIDATION,
            "the reply is JSON inside a markdown fence",
            raw=content,
            feedback="Reply with the bare JSON object only: no markdown fence, no other text.",
        )
    try:
        return loads(text, finite=True)
    except json.JSONDecodeError as exc:
        raise InvalidOutput(
            Cause.VALIDATION,
            f"the reply is not JSON ({exc.msg} at char {exc.pos})",
            raw=content,
            feedback="That was not JSON. Reply with only a JSON object that matches the schema.",
        ) from None
    except Unreadable as exc:  # too deep, NaN or Infinity, a number out of range
        raise InvalidOutput(
            Cause.VALIDATION, f"the reply {exc}", raw=content, feedback=exc.feedback
        ) from None


def schema_violation(content: str, problems: str) -> InvalidOutput:
    return InvalidOutput(
        Cause.VALIDATION,
        f"the reply does not match the schema: {problems}",
        raw=content,
        feedback=f"That JSON does not match the schema: {problems}. Reply with fixed JSON only.",
    )


def load_schema(ref: str) -> OutputSchema:
    """`path.json` -> a JSON Schema; `module:Class` -> a pydantic model importable from cwd."""
    if ref.endswith(".json"):
        return _load_json_schema(Path(ref))
    module_name, sep, class_name = ref.partition(":")
    if not sep or not module_name or not class_name:
        raise ConfigError(
            f"--schema {ref!r}: give a JSON Schema file (path.json) or a pydantic model "
            "as module:Class, e.g. --schema labels:Sentiment"
        )
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, "")  # the working directory is importable, as with `python -m`
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--schema {ref!r}: cannot import {module_name!r}: {exc}") from None
    model = getattr(module, class_name, None)
    if not (isinstance(model, type) and issubclass(model, pydantic.BaseModel)):
        raise ConfigError(f"--schema {ref!r}: {class_name!r} is not a pydantic model in it")
    return PydanticSchema(model, model.model_json_schema())


def _load_json_schema(path: Path) -> JsonSchemaFile:
    try:
        schema = loads(path.read_text(encoding="utf-8"), finite=True)
    except FileNotFoundError:
        raise ConfigError(f"schema file {path} does not exist") from None
    except Unreadable as exc:  # too deep, NaN
        raise ConfigError(f"schema file {path} {exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"schema file {path} is not valid JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise ConfigError(f"schema file {path} must hold a JSON object (a JSON Schema)")
    try:
        return compile_json_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ConfigError(f"schema file {path} is not a valid JSON Schema: {exc.message}") from None


def compile_json_schema(schema: JsonSchema) -> JsonSchemaFile:
    """A validator for `schema`; raises `jsonschema.SchemaError` when it is no valid schema."""
    if "$schema" not in schema:
        validator_class = jsonschema.validators.validator_for(schema)
    elif not isinstance(draft := schema["$schema"], str) or not (
        validator_class := jsonschema.validators.validator_for(schema, default=None)  # type: ignore[arg-type]
    ):  # jsonschema would warn and use its latest draft; say so once, before the run
        raise jsonschema.SchemaError(f"$schema {draft!r} names no JSON Schema draft known here")
    # The format checker also compiles each `pattern`: a bad regex fails here, not per reply.
    checker = validator_class.FORMAT_CHECKER
    validator_class.check_schema(schema, format_checker=checker)  # type: ignore[call-arg]
    return JsonSchemaFile(schema, validator_class(schema))


@dataclass(frozen=True)
class AnyJsonObject:
    """OpenAI's `json_object` mode: any JSON object is a valid reply."""

    json_schema: JsonSchema = field(default_factory=lambda: {"type": "object"})

    def validate(self, content: str) -> Any:
        value = parse_json(content)
        if not isinstance(value, dict):
            raise schema_violation(content, "(root): the reply must be a JSON object")
        return value
