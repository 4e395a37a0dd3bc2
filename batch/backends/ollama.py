"""The Ollama backend: one long-lived `ollama.AsyncClient` per host.

Every exception the client can raise (see the client's behaviour notes) is sorted here into
`Transient` (retry), `Rejected` (this row fails) or `FatalRunError` (the run stops).
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx
import ollama
import pydantic

from batch.backends.base import ChatRequest, Completion, Usage
from batch.errors import FatalRunError, Rejected, Transient

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
DURATION_FIELDS = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")


def display_host(url: str) -> str:
    """The host URL as shown to users: never with credentials in it."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


class OllamaBackend:
    def __init__(self, host: str, *, concurrency: int, timeout: float) -> None:
        self._name = display_host(host)
        self._timeout = timeout
        # One connection per slot, all kept alive: the default pool keeps only 20 alive.
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self._client = ollama.AsyncClient(
            host,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=limits,
        )

    @property
    def name(self) -> str:
        return self._name

    async def aclose(self) -> None:
        await self._client.close()  # type: ignore[no-untyped-call]

    async def chat(self, request: ChatRequest) -> Completion:
        try:
            # The httpx timeout bounds each read; this bounds the whole request.
            with anyio.fail_after(self._timeout):
                response = await self._client.chat(
                    model=request.model,
                    messages=request.messages,
                    format=request.format,
                    options=request.options or None,
                    stream=False,
                )
        except ollama.ResponseError as exc:
            raise self._classify_status(exc, request.model) from None
        except (ConnectionError, httpx.ConnectError, httpx.ConnectTimeout):
            raise Transient("connect", f"cannot connect to {self._name}") from None
        except (TimeoutError, httpx.TimeoutException):
            raise Transient(
                "timeout", f"no answer from {self._name} within {self._timeout:g}s", kind="timeout"
            ) from None
        except (httpx.RemoteProtocolError, httpx.NetworkError) as exc:
            raise Transient(
                "disconnect", f"{self._name} dropped the connection: {exc or type(exc).__name__}"
            ) from None
        except (json.JSONDecodeError, pydantic.ValidationError, AttributeError) as exc:
            # AttributeError: the client trips over an error body that is JSON but not an object.
            raise Transient(
                "bad_body", f"{self._name} sent an unreadable response ({type(exc).__name__})"
            ) from None
        durations = {f: v for f in DURATION_FIELDS if (v := getattr(response, f, None))}
        return Completion(
            content=response.message.content or "",
            done_reason=response.done_reason,
            usage=Usage(1, response.prompt_eval_count or 0, response.eval_count or 0),
            durations_ns=durations,
        )

    def _classify_status(self, exc: ollama.ResponseError, model: str) -> Exception:
        status, text = exc.status_code, str(exc.error).strip()
        where = f"{self._name} answered HTTP {status}: {text}"
        if status == -1:
            return Transient("stream_error", f"{self._name} reported an error mid-response: {text}")
        if status in RETRY_STATUSES:
            return Transient(f"http_{status}", where, kind="http", status_code=status)
        if status == 404 and "not found" in text and "page" not in text:
            return FatalRunError(
                f"model {model!r} is not available on {self._name}: "
                f"pull it there (`ollama pull {model}`) or pass another --model"
            )
        if status == 404:
            return FatalRunError(
                f"{self._name} does not serve the Ollama API (HTTP 404 for /api/chat): check --host"
            )
        if status in (401, 403):
            return FatalRunError(
                f"{self._name} refused the credentials (HTTP {status}): check OLLAMA_API_KEY"
            )
        return Rejected(where, status_code=status)
