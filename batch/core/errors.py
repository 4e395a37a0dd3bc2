"""Every error the worker raises, by who must act on it.

BatchError
├── ConfigError ........ bad flags, job file, schema or paths: the user fixes the command (exit 2)
├── FatalRunError ...... the run cannot go on: unknown model, unreachable host (exit 2)
│   └── ModelMissing ... one host lacks the model: with other hosts, the run goes on without it
└── RowFailure ......... one row failed; becomes an error line in the output, never a crash
    ├── BadInput ....... the input line itself is unusable (not sent)
    │   └── DuplicateId  its id was used by an earlier line
    ├── Retryable ...... worth another attempt
    │   ├── Transient .. the transport or server hiccuped: back off, then resend
    │   └── InvalidOutput  the model answered, but not usably: re-ask at once with the reason
    ├── Rejected ....... the server refused this request for good (e.g. HTTP 400)
    ├── PromptTruncated  the prompt did not fit the model's context: refused, or cut
    ├── SchemaUnusable . the schema cannot check a reply (e.g. a $ref to nowhere)
    └── Unexpected ..... an exception nothing above names (a bug): that row fails, not the run

A `Retryable` names its `Cause` (the summary's retry counters), a `RowFailure` its `ErrorKind`
(the output's `error.type`): string enums, written as their values.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal


class Cause(StrEnum):
    """Why a row's attempt is tried again: the keys of the summary's `retries.by_cause`."""

    # `Transient`: the transport or the server.
    CONNECT = "connect"  # refused: the request never reached a model
    DISCONNECT = "disconnect"
    TIMEOUT = "timeout"
    PROXY = "proxy"
    BAD_BODY = "bad_body"  # a response that could not be read
    STREAM_ERROR = "stream_error"  # an error the server reported mid-response
    HTTP_429 = "http_429"
    HTTP_500 = "http_500"
    HTTP_502 = "http_502"
    HTTP_503 = "http_503"
    HTTP_504 = "http_504"
    # `InvalidOutput`: the model's reply (each is also the failed row's error type).
    VALIDATION = "validation"
    TRUNCATED = "truncated"
    INCOMPLETE_REPLY = "incomplete_reply"
    RETRY = "retry"  # `Retryable`'s own, for one raised as such (batch raises none)


# The causes of an `InvalidOutput`: what was wrong with the reply.
ReplyCause = Literal[Cause.VALIDATION, Cause.TRUNCATED, Cause.INCOMPLETE_REPLY]


class ErrorKind(StrEnum):
    """A failed row's `error.type` (`error.code` in OpenAI lines): the summary's
    `errors_by_type` keys."""

    ERROR = "error"  # `RowFailure`'s own, for one raised as such
    BAD_INPUT = "bad_input"
    HTTP = "http"
    TIMEOUT = "timeout"
    TRANSPORT = "transport"
    PROMPT_TRUNCATED = "prompt_truncated"
    SCHEMA = "schema"
    INTERNAL = "internal"
    VALIDATION = "validation"
    TRUNCATED = "truncated"
    INCOMPLETE_REPLY = "incomplete_reply"


class BatchError(Exception):
    """Base of everything raised on purpose by this package."""


class ConfigError(BatchError):
    """The run is misconfigured; the message says which setting and how to fix it."""


class SettingsChanged(ConfigError):
    """An earlier output holds labels made under other settings (its `config` stamp differs).
    The run layer, which knows the settings, turns it into a message naming what changed."""

    def __init__(self, message: str, *, line: int, stamp: Any, model: Any) -> None:
        super().__init__(message)
        self.line = line
        self.stamp = stamp  # the line's `config` value
        self.model = model  # the line's `model`, when it has one


class FatalRunError(BatchError):
    """A failure that every further row would hit too, so the run stops."""


class ModelMissing(FatalRunError):
    """A host does not have a model. Fatal only when no host of the run has it."""

    def __init__(self, message: str, *, model: str, host: str) -> None:
        super().__init__(message)
        self.model = model
        self.host = host


class RowFailure(BatchError):
    """One row failed. `kind` becomes the output row's `error.type`: an `ErrorKind`, or, for a
    failure copied from an output line (`batch.reuse.dedup`), the type that line recorded."""

    kind: str = ErrorKind.ERROR
    host: str | None = None  # the host that failed it, when one did (set by the host pool)

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def as_record(self) -> dict[str, Any]:
        return {"type": self.kind, "message": self.message, **self.details}


class BadInput(RowFailure):
    kind = ErrorKind.BAD_INPUT

    def at_line(self, line: int) -> BadInput:
        """The same failure, naming the input line: the one place a message gets its line."""
        return BadInput(f"line {line}: {self.message}", **self.details)


class DuplicateId(BadInput):
    """The line's id was used by an earlier line (done before, or met earlier in this run)."""


class Retryable(RowFailure):
    """`cause` keys the summary's retry counters (e.g. `http_503`, `connect`, `validation`)."""

    cause: Cause = Cause.RETRY


class Transient(Retryable):
    def __init__(
        self,
        cause: Cause,
        message: str,
        *,
        kind: ErrorKind = ErrorKind.TRANSPORT,
        **details: Any,
    ):
        super().__init__(message, **details)
        self.cause = cause
        self.kind = kind


class InvalidOutput(Retryable):
    """The reply was prose, fenced, schema-violating or cut short.

    `feedback` is what the model is told on the re-ask; `raw` is its reply.
    """

    def __init__(self, cause: ReplyCause, message: str, *, raw: str, feedback: str) -> None:
        super().__init__(message, raw=raw)
        self.kind = ErrorKind(cause)  # a row whose re-asks run out fails as its cause says
        self.cause = cause
        self.raw = raw
        self.feedback = feedback


class Rejected(RowFailure):
    kind = ErrorKind.HTTP


class PromptTruncated(RowFailure):
    """The server counted as many prompt tokens as the context holds: Ollama drops what does not
    fit without saying so, so the reply answers a cut prompt. Not re-asked: it would be cut
    again."""

    kind = ErrorKind.PROMPT_TRUNCATED


class SchemaUnusable(RowFailure):
    """The schema raised while checking a reply: asking again would not help."""

    kind = ErrorKind.SCHEMA


class Unexpected(RowFailure):
    """An exception no other class names: a bug in batch or below it. Its row fails with the
    exception's type and message; the run goes on."""

    kind = ErrorKind.INTERNAL
