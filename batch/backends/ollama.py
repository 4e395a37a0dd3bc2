"""The Ollama backend: one long-lived `ollama.AsyncClient` per host.

Every exception the client can raise (see the client's behaviour notes) is sorted here into
`Transient` (retry), `Rejected` (this row fails) or `FatalRunError` (the run stops). Text that
comes from the server or the network is redacted before it reaches a message: a proxy may echo
the token it refused.

The model's life during a run: `/api/show` before its first row (model_check.py); every request
carries `keep_alive`, so the model stays loaded on a shared server; when the run chose that
keep-alive itself, the model is handed back at the end with the server's own default.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import httpx
import ollama
import pydantic

from batch.access import ThinkSetting, display_host
from batch.backends.base import ChatRequest, Completion, Usage
from batch.backends.http_client import (
    AccessSettings,
    connect,
    describe_tls_failure,
    tls_failure,
)
from batch.backends.model_check import ModelCheck
from batch.errors import FatalRunError, ModelMissing, Rejected, Transient

__all__ = ["RUN_KEEP_ALIVE", "OllamaBackend", "display_host"]

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
DURATION_FIELDS = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")
# Sent with every request when the user set no keep_alive: far above any gap between two rows
# (a backoff), short enough that a killed run does not pin the model for long. Ollama's
# scheduler also unloads the idle model with the shortest keep-alive first.
RUN_KEEP_ALIVE = "30m"
HAND_BACK_SECONDS = 5.0
PROBE_SECONDS = 5.0


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
    ) -> None:
        self._name = display_host(host)
        self._timeout = timeout
        self._connection = connect(host, access or AccessSettings())
        self._keep_alive = RUN_KEEP_ALIVE if keep_alive is None else keep_alive
        self._hand_back = keep_alive is None
        self._think = think
        self._used: set[str] = set()  # models that answered here, to hand back at the end
        # One connection per slot, all kept alive: the default pool keeps only 20 alive.
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self._client = ollama.AsyncClient(
            self._connection.host,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=limits,
            **self._connection.kwargs,
        )
        self._models = ModelCheck(self._show, self._ps)

    @property
    def name(self) -> str:
        return self._name

    async def aclose(self) -> None:
        try:
            if self._hand_back and self._used:
                with anyio.move_on_after(HAND_BACK_SECONDS, shield=True):
                    for model in sorted(self._used):
                        await self._restore_keep_alive(model)
        finally:
            await self._client.close()  # type: ignore[no-untyped-call]

    async def probe(self) -> bool:
        """Whether the server answers `GET /` (Ollama says "Ollama is running"), for a host that
        went out of rotation. A fresh connection: the client's pooled ones may be dead."""
        try:
            async with httpx.AsyncClient(
                base_url=self._connection.host,
                timeout=httpx.Timeout(min(self._timeout, PROBE_SECONDS)),
                **self._connection.kwargs,
            ) as client:
                response = await client.get("/")
        except httpx.HTTPError as exc:
            log.debug("%s: probe failed: %s", self._name, self._redact(str(exc)))
            return False
        return response.status_code < 500

    async def _restore_keep_alive(self, model: str) -> None:
        """A load-only request without keep_alive: the server's default applies again, as if
        any other client had used the model last. Skipped when the model is no longer loaded,
        so that it is never loaded again just for this."""
        if not await self._models.is_loaded(model):
            return
        try:
            await self._client.chat(model=model, messages=[])
        except Exception as exc:  # the run is over; this must not turn it into a failure
            log.debug("%s: could not restore the keep-alive of %s: %s", self._name, model, exc)

    async def chat(self, request: ChatRequest) -> Completion:
        await self._models.facts(request.model)
        think = self._think
        if think is None and request.format is not None:
            think = False  # see README "Production setups": a schema wants the answer only
        response = await self._call(
            request.model,
            self._client.chat(
                model=request.model,
                messages=request.messages,
                format=request.format,
                options=request.options or None,
                think=think,
                keep_alive=self._keep_alive,
                stream=False,
            ),
        )
        self._used.add(request.model)
        durations = {f: v for f in DURATION_FIELDS if (v := getattr(response, f, None))}
        return Completion(
            content=response.message.content or "",
            done_reason=response.done_reason,
            usage=Usage(1, response.prompt_eval_count or 0, response.eval_count or 0),
            durations_ns=durations,
            context_length=await self._models.context_length(request.model, request.options),
        )

    async def _show(self, model: str) -> ollama.ShowResponse | None:
        try:
            shown: ollama.ShowResponse = await self._call(
                model, self._client.show(model), route="/api/show"
            )
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
            raise Transient("connect", f"cannot connect to {self._name}") from None
        except (httpx.UnsupportedProtocol, httpx.InvalidURL):
            raise FatalRunError(
                f"cannot send to {self._name}: write --host as http://HOST:PORT or https://..."
            ) from None
        except httpx.ProxyError as exc:
            if str(exc).startswith("407"):  # the tunnel was refused: every row would be
                raise FatalRunError(self._proxy_refused()) from None
            raise Transient(
                "proxy", self._redact(f"the proxy for {self._name} failed: {exc}")
            ) from None
        except (TimeoutError, httpx.TimeoutException):
            raise Transient(
                "timeout", f"no answer from {self._name} within {self._timeout:g}s", kind="timeout"
            ) from None
        except (httpx.RemoteProtocolError, httpx.NetworkError) as exc:
            if (tls := tls_failure(exc)) is not None:
                raise FatalRunError(self._redact(describe_tls_failure(self._name, tls))) from None
            raise Transient(
                "disconnect",
                self._redact(f"{self._name} dropped the connection: {exc or type(exc).__name__}"),
            ) from None
        except (ValueError, RecursionError, pydantic.ValidationError, AttributeError) as exc:
            # AttributeError: the client trips over an error body that is JSON but not an object.
            # ValueError: a body that is not JSON, or not UTF-8 (httpx decodes it strictly);
            # RecursionError: a body nested past Python's stack.
            raise Transient(
                "bad_body", f"{self._name} sent an unreadable response ({type(exc).__name__})"
            ) from None

    def _redact(self, text: str) -> str:
        return self._connection.redact(text)

    def _classify_status(self, exc: ollama.ResponseError, model: str, route: str) -> Exception:
        status, text = exc.status_code, self._redact(str(exc.error).strip())
        where = f"{self._name} answered HTTP {status}: {text}"
        if status == -1:
            return Transient("stream_error", f"{self._name} reported an error mid-response: {text}")
        if status in RETRY_STATUSES:
            return Transient(f"http_{status}", where, kind="http", status_code=status)
        if status == 404 and "not found" in text and "page" not in text:
            return ModelMissing(
                f"model {model!r} is not available on {self._name}: "
                f"pull it there (`ollama pull {model}`) or pass another --model",
                model=model,
                host=self._name,
            )
        if status == 404 and route != "/api/chat":  # a proxy may route only what it must
            return Rejected(where, status_code=status)
        if status == 404:
            return FatalRunError(
                f"{self._name} does not serve the Ollama API (HTTP 404 for {route}): check --host"
            )
        if status in (401, 403):
            return FatalRunError(self._refused(status))
        if status == 407:
            return FatalRunError(self._proxy_refused())
        return Rejected(where, status_code=status)

    def _proxy_refused(self) -> str:
        return (
            f"the proxy for {self._name} refused its credentials (HTTP 407): check the user "
            "and password in --proxy or HTTP(S)_PROXY"
        )

    def _refused(self, status: int) -> str:
        sent = self._connection.credentials
        what = "refused the credentials" if sent else "wants credentials"
        told = (
            f"sent: {', '.join(sent)}" if sent else "none were sent: set OLLAMA_API_KEY or --header"
        )
        return f"{self._name} {what} (HTTP {status}); {told}"
