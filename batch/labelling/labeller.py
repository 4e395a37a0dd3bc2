"""One row, start to finish: send, validate, re-ask or retry, and account for every attempt."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from functools import partial
from typing import Any

import anyio
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from batch.core.chat import Backend, ChatRequest, Completion, bounded_echo
from batch.core.errors import (
    BadInput,
    BatchError,
    Cause,
    ErrorKind,
    InvalidOutput,
    PromptTruncated,
    Retryable,
    RowFailure,
    Unexpected,
)
from batch.core.events import NO_EVENTS, AttemptSeen, RowSeen, RunEvents
from batch.core.images import attach_images, has_images
from batch.core.jsontext import MAX_REPLY_CHARS
from batch.core.rows import Row, RowResult
from batch.core.schema import OutputSchema

log = logging.getLogger(__name__)

RAW_KEPT = 1000  # of a reply over the size cap: its start is kept, and shown to the re-ask


class RetryPolicy:
    """Attempts per row, any cause; exponential backoff with jitter for transport failures."""

    def __init__(self, max_attempts: int = 5, backoff: float = 0.5, backoff_max: float = 10.0):
        self.max_attempts = max_attempts
        self._backoff = wait_exponential_jitter(multiplier=backoff, max=backoff_max, jitter=backoff)

    def wait(self, state: RetryCallState) -> float:
        # A re-ask goes out at once: the model answered, only its answer was unusable.
        if state.outcome is not None and isinstance(state.outcome.exception(), InvalidOutput):
            return 0.0
        return self._backoff(state)


class Labeller:
    """Labels rows through a backend (the host pool, or a test double) under one retry
    policy; each row is checked against its own schema (`Row.schema`)."""

    def __init__(
        self, backend: Backend, policy: RetryPolicy, events: RunEvents = NO_EVENTS
    ) -> None:
        self._backend = backend
        self._policy = policy
        self._events = events  # metrics and traces: a row and each attempt

    async def label(self, row: Row) -> RowResult:
        result = RowResult(row)
        if row.failure is not None or row.request is None:
            result.failure = row.failure
            return result
        started = time.monotonic()
        base = row.request
        schema = row.schema
        if has_images(base):
            try:  # read here, not when the row is built: only rows in flight hold images
                base = await attach_images(base)
            except BadInput as failure:
                result.failure = failure.at_line(row.line)
                return result
        with self._events.row(row) as seen:
            await self._attempts(row, base, result, schema, seen)
            seen.finished(result)
        result.elapsed_s = time.monotonic() - started
        return result

    async def _attempts(
        self,
        row: Row,
        base: ChatRequest,
        result: RowResult,
        schema: OutputSchema | None,
        seen: RowSeen,
    ) -> None:
        try:
            try:
                # Most rows need one attempt: it goes out without the retry loop, whose set-up
                # and bookkeeping cost more CPU than the rest of a row's own work (measured).
                result.output = await self._try(base, result, schema, seen)
            except Retryable as first:
                await self._retry(row, base, first, result, schema, seen)
        except RowFailure as failure:
            result.failure = failure
        except BatchError:  # the run's trouble (fatal, config), not this row's
            raise
        except Exception as exc:  # a bug below us must not end the run: this row fails
            log.debug("line %d: unexpected error", row.line, exc_info=exc)
            result.failure = Unexpected(
                f"unexpected {type(exc).__name__}: {exc} (a bug: run with -v for the traceback)"
            )

    async def _retry(
        self,
        row: Row,
        base: ChatRequest,
        first: Retryable,
        result: RowResult,
        schema: OutputSchema | None,
        seen: RowSeen,
    ) -> None:
        """The attempts after a failed first one, under the retry policy. The first failure is
        replayed into the loop (not sent again), so that the waits and the attempt budget are
        those of a loop that made every attempt."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._policy.max_attempts),
            wait=self._policy.wait,
            retry=retry_if_exception_type(Retryable),
            before_sleep=partial(_log_retry, row),
            sleep=anyio.sleep,
            reraise=True,
        )
        replay: Retryable | None = first
        request = base
        async for attempt in retrying:
            with attempt:
                if replay is not None:
                    failure, replay = replay, None
                    raise failure
                last = result.failure
                assert isinstance(last, Retryable), "a retry follows a retryable failure"
                result.retries.append(last.cause)
                if isinstance(last, InvalidOutput):
                    # Re-ask with the reason; only the latest bad reply, to spare the context.
                    feedback = [
                        {"role": "assistant", "content": bounded_echo(last.raw)},
                        {"role": "user", "content": last.feedback},
                    ]
                    request = replace(base, messages=[*base.messages, *feedback])
                result.output = await self._try(request, result, schema, seen)

    async def _try(
        self, request: ChatRequest, result: RowResult, schema: OutputSchema | None, seen: RowSeen
    ) -> Any:
        """One attempt, counted; its failure is kept on `result` and raised."""
        result.attempts += 1
        with seen.attempt(request) as attempt:
            try:
                output = await self._attempt(request, result, schema, attempt)
            except RowFailure as failure:
                attempt.failed(_error_type(failure), failure.host)
                result.failure = failure
                raise
            except BatchError:  # the run's trouble (a budget, a fatal error): no attempt made
                raise
            except Exception:  # a bug: the row fails as `internal`, and the attempt counts
                attempt.failed(ErrorKind.INTERNAL, None)
                raise
        result.failure = None
        return output

    async def _attempt(
        self,
        request: ChatRequest,
        result: RowResult,
        schema: OutputSchema | None,
        attempt: AttemptSeen,
    ) -> Any:
        completion = await self._backend.chat(request)
        attempt.replied(completion)
        result.host = completion.host
        result.usage.add(completion.usage)
        result.done_reason = completion.done_reason
        result.durations_ns = _summed(result.durations_ns, completion)
        result.content = completion.content
        result.logprobs = completion.logprobs
        _check_size(completion.content)
        _check_prompt_fitted(completion)
        if schema is None:
            return completion.content
        if completion.done_reason == "length":
            raise InvalidOutput(
                Cause.TRUNCATED,
                "the reply was cut off at the length limit (done_reason 'length'), "
                "so its JSON is incomplete: raise num_predict or num_ctx",
                raw=completion.content,
                feedback="Your reply was cut off. Reply again with a shorter JSON object.",
            )
        return schema.validate(completion.content)


def _error_type(failure: RowFailure) -> str:
    """A failed attempt's type for metrics and traces: its cause, else its kind."""
    return str(getattr(failure, "cause", None) or failure.kind)


def _check_size(content: str) -> None:
    if len(content) > MAX_REPLY_CHARS:
        raise InvalidOutput(
            Cause.VALIDATION,
            f"the reply is {len(content):,} characters long, over the cap of "
            f"{MAX_REPLY_CHARS:,}: only its start is kept",
            raw=content[:RAW_KEPT],
            feedback="Your reply was far too long. Reply again, briefly, with only the answer.",
        )


def _check_prompt_fitted(completion: Completion) -> None:
    """Ollama cuts a prompt longer than its context without an error; the one tell is a prompt
    token count that reached the context length."""
    context, used = completion.context_length, completion.usage.input_tokens
    if context and used >= context:
        raise PromptTruncated(
            f"the prompt used all {context} tokens of the model's context, so the server "
            "likely cut it and the reply answers part of it: raise num_ctx "
            f"(--option num_ctx={_next_power_of_two(used)}) or shorten the prompt",
            prompt_tokens=used,
            context_length=context,
            raw=completion.content,
        )


def _next_power_of_two(n: int) -> int:
    return 1 << n.bit_length()


def _log_retry(row: Row, state: RetryCallState) -> None:
    failure = state.outcome.exception() if state.outcome else None
    log.debug(
        "line %d (id %r): attempt %d failed (%s), next in %.2fs",
        row.line,
        row.id,
        state.attempt_number,
        failure,
        state.upcoming_sleep,
    )


def _summed(total: dict[str, int], completion: Completion) -> dict[str, int]:
    merged = dict(total)
    for key, value in completion.durations_ns.items():
        merged[key] = merged.get(key, 0) + value
    return merged
