"""The Ollama backend: one long-lived `ollama.AsyncClient` per host.

Every exception the client can raise (see the client's behaviour notes) is sorted here into
`Transient` (retry), `Rejected` (this row fails) or `FatalRunError` (the run stops). Text that
comes from the server or the network is redacted before it reaches a message: a proxy may echo
the token it refused.

The model's life during a run: `/api/show` before its first row (model_check.py), and
`/api/version` once per host; every request carries `keep_alive`, so the model stays loaded on a
shared server, and `truncate: false`, so a prompt too long for the context is refused (a
`prompt_truncated` row) instead of cut or stripped of its first messages without a sign. When the
run chose the keep-alive itself, the model is handed back at the end (handback.py).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import httpx
import ollama
import pydantic
import pydantic_core
from ollama._client import _copy_messages  # the client's message conversion, images included

from batch.core.chat import ChatRequest, Completion, TokenLogprob, Usage
from batch.core.errors import (
    BadInput,
    Cause,
    ErrorKind,
    FatalRunError,
    InvalidOutput,
    PromptTruncated,
    Rejected,
    Transient,
)
from batch.core.ollama_options import options_problem
from batch.serving.access import ThinkSetting, display_host
from batch.serving.handback import HandBack
from batch.serving.http_client import (
    AccessSettings,
    connect,
    describe_tls_failure,
    skip_empty_cookie_work,
    tls_failure,
)
from batch.serving.model_check import ModelCheck, ModelFacts, show_response
from batch.serving.ollama_errors import HostContext, classify, proxy_refused
from batch.serving.server_notes import ServerNotes

__all__ = ["RUN_KEEP_ALIVE", "OllamaBackend", "display_host"]

log = logging.getLogger(__name__)

DURATION_FIELDS = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")
# Sent with every request when the user set no keep_alive: far above any gap between two rows
# (a backoff), short enough that a killed run does not pin the model for long. Ollama's
# scheduler also unloads the idle model with the shortest keep-alive first.
RUN_KEEP_ALIVE = "30m"
PROBE_SECONDS = 5.0
INCOMPLETE_FEEDBACK = (
    "Your reply stopped while repeating itself and was not finished. Answer again, briefly."
)


class OllamaBackend:
    def __init__(
        self,
        host: str,
        *,
        concurrency: int,
        timeout: float,
        access: AccessSettings | None = None,
        keep_alive: float | str | None = None,
        think: ThinkSetting = None,
        trace_headers: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        """`trace_headers`: a W3C `traceparent` (the current attempt's span) for each request."""
        self._name = display_host(host)
        self._timeout = timeout
        self._connection = connect(host, access or AccessSettings())
        self._keep_alive = RUN_KEEP_ALIVE if keep_alive is None else keep_alive
        self._think = think
        # One connection per slot, all kept alive.
        self._client = ollama.AsyncClient(
            self._connection.host,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            **self._connection.client_kwargs(concurrency),
            **_event_hooks(trace_headers),
        )
        http: httpx.AsyncClient = self._client._client
        # The URL httpx would join from the base URL for every request, joined once.
        self._chat_url = http.base_url.copy_with(raw_path=http.base_url.raw_path + b"api/chat")
        skip_empty_cookie_work(http)
        self._models = ModelCheck(self._show, self._ps)
        self._notes = ServerNotes(self._name, concurrency, self._fetch_version)
        self._hand_back = HandBack(self._name, self._models, self._load_only, keep_alive is None)

    @property
    def server_version(self) -> str | None:
        """What `/api/version` said, once the first row was sent here (None: unknown)."""
        return self._notes.version

    @property
    def name(self) -> str:
        return self._name

    async def aclose(self) -> None:
        try:
            await self._hand_back.run()
        finally:
            await self._client.close()  # type: ignore[no-untyped-call]

    async def probe(self) -> bool:
        """Whether the server answers `GET /` (Ollama says "Ollama is running"), for a host that
        went out of rotation. A fresh connection: the client's pooled ones may be dead."""
        try:
            async with httpx.AsyncClient(
                base_url=self._connection.host,
                timeout=httpx.Timeout(min(self._timeout, PROBE_SECONDS)),
                **self._connection.client_kwargs(1),
            ) as client:
                response = await client.get("/")
        except httpx.HTTPError as exc:
            log.debug("%s: probe failed: %s", self._name, self._redact(str(exc)))
            return False
        return response.status_code < 500

    def model_family(self, model: str) -> str | None:
        """The family /api/show gave for `model` (a one-slot family starts an auto limit at
        one); None until its first request asked."""
        return self._models.family(model)

    async def chat(self, request: ChatRequest) -> Completion:
        facts = await self._models.facts(request.model)
        await self._first_use(request.model, facts)
        if (problem := options_problem(request.options)) is not None:
            raise BadInput(f"{problem} (in the row's options)")
        self._notes.options_sent(request.model, request.options)
        try:
            response = await self._call(request.model, self._send(request))
        except PromptTruncated as exc:
            if "context_length" not in exc.details:
                context = await self._models.context_length(request.model, request.options)
                exc.details["context_length"] = context
            raise
        self._hand_back.used(request.model, request.options)
        content = response.message.content or ""
        if response.done is False:
            # The runner stopped a reply that repeated one token: not a finished reply.
            raise InvalidOutput(
                Cause.INCOMPLETE_REPLY,
                f"{self._name} ended the reply unfinished (done: false, no done_reason): its "
                "runner stops a reply that repeats one token over and over",
                raw=content,
                feedback=INCOMPLETE_FEEDBACK,
            )
        durations = {f: v for f in DURATION_FIELDS if (v := getattr(response, f, None))}
        return Completion(
            content=content,
            done_reason=response.done_reason,
            usage=Usage(1, response.prompt_eval_count or 0, response.eval_count or 0),
            durations_ns=durations,
            context_length=await self._models.context_length(request.model, request.options),
            logprobs=_token_logprobs(response),
            model=response.model,
        )

    async def _first_use(self, model: str, facts: ModelFacts) -> None:
        """Once per model: the server's version, warnings, and what the hand-back restores."""
        await self._notes.first_use(model, facts, self._hand_back.found)

    async def _send(self, request: ChatRequest) -> ollama.ChatResponse:
        """`/api/chat` through the client's own request path (`_request_raw`: its transport and
        its status errors), with the fields its request model drops (`truncate`) and `think` as
        Ollama reads it (also "max"). The body is encoded, and the reply read into the client's
        `ChatResponse`, by pydantic's JSON in one step each: about a fifth of the CPU of the
        json module and the field-by-field model that `chat()` uses (measured)."""
        think = self._think
        if think is None and request.format is not None:
            # docs/deployment.md "Production setups": a schema wants the answer only.
            think = False
        body = pydantic_core.to_json(chat_body(request, think, self._keep_alive))
        response = await self._client._request_raw(  # type: ignore[no-untyped-call]
            "POST", self._chat_url, content=body
        )
        return ollama.ChatResponse.model_validate_json(response.content)

    async def _load_only(self, model: str, keep_alive: float | str, options: Any) -> None:
        body: dict[str, Any] = {
            "model": model,
            "messages": [],
            "keep_alive": keep_alive,
            "stream": False,
        }
        if options:
            body["options"] = options
        await self._call(model, self._raw("POST", "/api/chat", json=body))

    async def _fetch_version(self) -> str | None:
        try:
            response = await self._call("", self._raw("GET", "/api/version"))
            version = response.json().get("version")
        except (FatalRunError, Rejected, Transient, ValueError, AttributeError) as exc:
            log.debug("%s: no server version: %s", self._name, exc)
            return None
        return version if isinstance(version, str) else None

    async def _show(self, model: str) -> ollama.ShowResponse | None:
        try:
            # Raw: an older server may leave out `model_info`, which the client's model requires.
            answer = await self._call(
                model,
                self._raw("POST", "/api/show", json={"model": model}),
                route="/api/show",
            )
            shown = show_response(answer.json())
        except FatalRunError:
            raise
        except Rejected as exc:  # e.g. a proxy that routes /api/chat only: check on the way
            log.debug("%s: no model check for %s: %s", self._name, model, exc)
            return None
        if self._think not in (None, False) and "thinking" not in (shown.capabilities or ()):
            raise FatalRunError(
                f"model {model!r} on {self._name} does not think (its capabilities: "
                f"{', '.join(shown.capabilities or ()) or 'none listed'}): drop --think"
            )
        return shown

    async def _ps(self) -> ollama.ProcessResponse | None:
        running: ollama.ProcessResponse = await self._call("", self._client.ps(), route="/api/ps")
        return running

    async def _call(self, model: str, call: Any, route: str = "/api/chat") -> Any:
        try:
            # The httpx timeout bounds each read; this bounds the whole request.
            with anyio.fail_after(self._timeout):
                return await call
        except ollama.ResponseError as exc:
            raise self._classify_status(exc, model, route) from None
        except (ConnectionError, httpx.ConnectError, httpx.ConnectTimeout) as exc:
            if (tls := tls_failure(exc)) is not None:
                raise FatalRunError(self._redact(describe_tls_failure(self._name, tls))) from None
            raise Transient(Cause.CONNECT, f"cannot connect to {self._name}") from None
        except (httpx.UnsupportedProtocol, httpx.InvalidURL):
            raise FatalRunError(
                f"cannot send to {self._name}: write --host as http://HOST:PORT or https://..."
            ) from None
        except httpx.ProxyError as exc:
            if str(exc).startswith("407"):  # the tunnel was refused: every row would be
                raise FatalRunError(proxy_refused(self._name)) from None
            raise Transient(
                Cause.PROXY, self._redact(f"the proxy for {self._name} failed: {exc}")
            ) from None
        except (TimeoutError, httpx.TimeoutException):
            raise Transient(
                Cause.TIMEOUT,
                f"no answer from {self._name} within {self._timeout:g}s",
                kind=ErrorKind.TIMEOUT,
            ) from None
        except (httpx.RemoteProtocolError, httpx.NetworkError) as exc:
            if (tls := tls_failure(exc)) is not None:
                raise FatalRunError(self._redact(describe_tls_failure(self._name, tls))) from None
            raise Transient(
                Cause.DISCONNECT,
                self._redact(f"{self._name} dropped the connection: {exc or type(exc).__name__}"),
            ) from None
        except (ValueError, RecursionError, pydantic.ValidationError, AttributeError) as exc:
            # AttributeError: the client trips over an error body that is JSON but not an object.
            # ValidationError: a chat reply that is not JSON, not UTF-8, too deep or not a chat
            # response (pydantic reads it); ValueError: the same from the other routes (httpx
            # decodes strictly); RecursionError: a body nested past Python's stack.
            raise Transient(
                Cause.BAD_BODY, f"{self._name} sent an unreadable response ({type(exc).__name__})"
            ) from None

    def _raw(self, method: str, path: str, **kwargs: Any) -> Awaitable[httpx.Response]:
        """A request through the client's transport, its errors as the client raises them."""
        call: Awaitable[httpx.Response] = self._client._request_raw(  # type: ignore[no-untyped-call]
            method, path, **kwargs
        )
        return call

    def _redact(self, text: str) -> str:
        return self._connection.redact(text)

    def _classify_status(self, exc: ollama.ResponseError, model: str, route: str) -> Exception:
        status, text = exc.status_code, self._redact(str(exc.error).strip())
        if status == -1:
            return Transient(
                Cause.STREAM_ERROR, f"{self._name} reported an error mid-response: {text}"
            )
        host = HostContext(self._name, self._connection.credentials)
        return classify(host, status, text, model, route)


def chat_body(request: ChatRequest, think: Any, keep_alive: float | str) -> dict[str, Any]:
    """The `/api/chat` body the client would send, plus `truncate: false`."""
    body: dict[str, Any] = {
        "model": request.model,
        # The client's own conversion (images as base64), its Nones left out.
        "messages": [m.model_dump(exclude_none=True) for m in _copy_messages(request.messages)],
        "stream": False,
        "keep_alive": keep_alive,
        "truncate": False,  # refuse an over-long prompt instead of cutting it (v0.12.6 on)
    }
    if request.format is not None:
        body["format"] = request.format
    if request.options:
        body["options"] = request.options
    if think is not None:
        body["think"] = think
    if request.logprobs:
        body["logprobs"] = True  # unset unless asked: servers before 0.12.11 ignore it
    return body


def _token_logprobs(response: ollama.ChatResponse) -> tuple[TokenLogprob, ...] | None:
    """The reply's tokens with their log-probabilities; None when the server sent none (Ollama
    before 0.12.11 ignores the request's `logprobs`)."""
    if not response.logprobs:
        return None
    return tuple((entry.token, entry.logprob) for entry in response.logprobs)


def _event_hooks(trace_headers: Callable[[], Mapping[str, str]] | None) -> dict[str, Any]:
    """httpx's request hook that adds the trace headers (the client sends no others of ours)."""
    if trace_headers is None:
        return {}

    async def add_trace_headers(request: httpx.Request) -> None:
        request.headers.update(trace_headers())

    return {"event_hooks": {"request": [add_trace_headers]}}
