"""What an Ollama HTTP error means for the run, and what to tell the user.

Sorted by what Ollama's source answers (`server/routes.go`, `llm/llama_server.go`, `api/types.go`):

    400 + a too-long-prompt text ......... PromptTruncated: this row, not retried
    401 {"error": "unauthorized"} ......... a cloud model, the server is not signed in: fatal
    401/403 from a proxy ................. credentials: fatal
    403 with an empty body ............... Ollama's Host check (a proxy not passing Host): fatal
    404 model not found .................. ModelMissing
    405 .............................. not an Ollama API root: fatal
    500 option "x" must be of type ....... a bad option, on every row: fatal
    429, 5xx ............................. Transient: back off and resend
    other 4xx ............................ Rejected: this row fails
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from batch.core.errors import (
    Cause,
    ErrorKind,
    FatalRunError,
    ModelMissing,
    PromptTruncated,
    Rejected,
    Transient,
)
from batch.core.ollama_options import OPTION_ERROR

# The statuses worth another attempt, and the cause each is counted under.
RETRY_STATUSES = {
    429: Cause.HTTP_429,
    500: Cause.HTTP_500,
    502: Cause.HTTP_502,
    503: Cause.HTTP_503,
    504: Cause.HTTP_504,
}
# The texts servers answer a prompt longer than the context with, under `truncate: false` or
# with context shift off. llama-server's names both sizes.
_TOO_LONG = (
    "exceeds the context length",
    "exceeds the available context size",
    "is longer than the context length",
)
_SIZES = re.compile(r"request \((\d+) tokens\) exceeds the available context size \((\d+) tokens\)")


@dataclass(frozen=True)
class HostContext:
    """What an error message names: the host as shown, and the credentials sent to it."""

    name: str
    credentials: tuple[str, ...]


def too_long(text: str) -> PromptTruncated | None:
    if not any(marker in text for marker in _TOO_LONG):
        return None
    details: dict[str, int] = {}
    sizes = _SIZES.search(text)
    if sizes:
        details = {"prompt_tokens": int(sizes[1]), "context_length": int(sizes[2])}
    size = f" ({details['prompt_tokens']} tokens)" if details else ""
    room = f" of {details['context_length']} tokens" if details else ""
    return PromptTruncated(
        f"the row's prompt{size} does not fit the model's context{room}, and the server refused "
        "to cut it (it would otherwise have dropped part of it without a sign): raise num_ctx "
        "(--option num_ctx=N) or shorten the row's input",
        **details,
    )


def classify(
    host: HostContext, status: int, text: str, model: str, route: str
) -> FatalRunError | Transient | Rejected | PromptTruncated:
    """The exception for an HTTP error `status` with body text `text` (already redacted)."""
    where = f"{host.name} answered HTTP {status}: {text}"
    if status == 400 and (truncated := too_long(text)) is not None:
        return truncated
    if status == 500 and (option := OPTION_ERROR.search(text)) is not None:
        return FatalRunError(
            f"{host.name} refused option {option[1]!r} ({text}): every row would fail the same "
            "way; fix it in --option, the job file's [options] or the rows' options"
        )
    if (cause := RETRY_STATUSES.get(status)) is not None:
        return Transient(cause, where, kind=ErrorKind.HTTP, status_code=status)
    if status == 404 and "not found" in text and "page" not in text:
        return ModelMissing(
            f"model {model!r} is not available on {host.name}: "
            f"pull it there (`ollama pull {model}`) or pass another --model",
            model=model,
            host=host.name,
        )
    if status == 404 and route != "/api/chat":  # a proxy may route only what it must
        return Rejected(where, status_code=status)
    if status in (404, 405):
        return FatalRunError(
            f"{host.name} does not serve the Ollama API (HTTP {status} for {route}): check "
            "--host; it is the server's root URL, e.g. http://gpu1:11434"
        )
    if status == 401 and text == "unauthorized":
        return FatalRunError(
            f"model {model!r} on {host.name} is a cloud model and that server is not signed in "
            "to ollama.com (HTTP 401): run `ollama signin` on the server, or use a local model; "
            "OLLAMA_API_KEY on this side does not sign the server in"
        )
    if status == 403 and not text:
        return FatalRunError(
            f"{host.name} answered HTTP 403 with no body: that is Ollama refusing the request's "
            "Host header, which happens behind a reverse proxy that passes its own host name to "
            "an Ollama listening on loopback. Have the proxy send `Host: localhost:11434` "
            "(nginx: proxy_set_header Host localhost:11434), or make Ollama listen on another "
            "address (OLLAMA_HOST=0.0.0.0:11434)"
        )
    if status in (401, 403):
        return FatalRunError(_refused(host, status))
    if status == 407:
        return FatalRunError(proxy_refused(host.name))
    return Rejected(where, status_code=status)


def proxy_refused(name: str) -> str:
    return (
        f"the proxy for {name} refused its credentials (HTTP 407): check the user "
        "and password in --proxy or HTTP(S)_PROXY"
    )


def _refused(host: HostContext, status: int) -> str:
    sent = host.credentials
    what = "refused the credentials" if sent else "wants credentials"
    told = f"sent: {', '.join(sent)}" if sent else "none were sent: set OLLAMA_API_KEY or --header"
    return f"{host.name} {what} (HTTP {status}); {told}"
