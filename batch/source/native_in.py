"""A native row (`{"id", "prompt" | "messages", "model", "system", "options", "images", ...}`)
-> the chat request it asks for, under the run's defaults.

Failures name the field, not the line: `batch.source.builder` adds the line in one place.
"""

from __future__ import annotations

from typing import Any

from batch.core.chat import ChatRequest
from batch.core.errors import BadInput, ConfigError
from batch.core.images import ImagePolicy, image_refs
from batch.core.ollama_options import options_problem
from batch.core.rows import RowDefaults

ROLES = frozenset({"system", "user", "assistant", "tool"})
NO_MODEL = "names no model and none was given: pass --model NAME"


def native_request(defaults: RowDefaults, data: dict[str, Any]) -> ChatRequest:
    model = data.get("model", defaults.model)
    if not isinstance(model, str) or not model:
        if "model" in data:
            raise BadInput("model must be a non-empty string")
        raise ConfigError(NO_MODEL)
    options = data.get("options")
    if options is not None and not isinstance(options, dict):
        raise BadInput("options must be an object of Ollama options")
    if options and (problem := options_problem(options)) is not None:
        raise BadInput(problem)
    system = data.get("system", defaults.system)
    if system is not None and not isinstance(system, str):
        raise BadInput("system must be a string")
    messages = _messages(defaults, data, system)
    if "images" in data:
        _attach_row_images(data["images"], messages, defaults.images)
    merged = {**defaults.options, **options} if options else defaults.options
    return ChatRequest(model=model, messages=messages, format=defaults.format, options=merged)


def _messages(
    defaults: RowDefaults, data: dict[str, Any], system: str | None
) -> list[dict[str, Any]]:
    if "messages" not in data:
        prompt = _prompt(defaults.template, data)
        head = [{"role": "system", "content": system}] if system is not None else []
        return [*head, {"role": "user", "content": prompt}]
    messages = data["messages"]
    if not isinstance(messages, list) or not messages:
        raise BadInput("messages must be a non-empty array")
    messages = [_message_images(i, m, defaults.images) for i, m in enumerate(messages)]
    for i, message in enumerate(messages):
        if not (
            isinstance(message, dict)
            and message.get("role") in ROLES
            and isinstance(message.get("content", ""), str)
        ):
            raise BadInput(
                f"messages[{i}] needs a role (system, user, assistant or tool) and a string content"
            )
    if system is not None and messages[0].get("role") != "system":
        messages = [{"role": "system", "content": system}, *messages]
    return messages


def _prompt(template: str | None, data: dict[str, Any]) -> str:
    if template is not None:
        try:
            return template.format_map(data)
        except KeyError as exc:
            raise BadInput(
                f"the template uses field {exc.args[0]!r}, which this row lacks"
            ) from None
        except (IndexError, AttributeError, ValueError, TypeError) as exc:
            raise BadInput(f"cannot fill the template: {exc}") from None
    prompt = data.get("prompt")
    if prompt is None:
        raise BadInput("the row has neither 'prompt' nor 'messages'")
    if not isinstance(prompt, str):
        raise BadInput("prompt must be a string")
    return prompt


def _message_images(index: int, message: Any, policy: ImagePolicy) -> Any:
    """A message's own `images` (Ollama's spelling) as refs, read just before sending."""
    if isinstance(message, dict) and "images" in message:
        refs = image_refs(message["images"], f"messages[{index}].images", policy)
        return {**message, "images": refs}
    return message


def _attach_row_images(values: Any, messages: list[dict[str, Any]], policy: ImagePolicy) -> None:
    """A row's `images` go with its last user message."""
    refs = image_refs(values, "images", policy)
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "user":
            messages[i] = {**messages[i], "images": [*messages[i].get("images", ()), *refs]}
            return
    raise BadInput("images need a user message to go with")
