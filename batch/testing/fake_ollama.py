"""A fake Ollama server: real HTTP on loopback, faults on demand, fast enough for benchmarks.

It answers `/api/chat` and `/api/generate` like Ollama does (see ollama-api.md), with content
that is deterministic for a given request:

- `format` is a JSON Schema: a conforming instance, compact JSON (`schema_instance`); enum
  values are picked by a CRC-32 of the prompt text, so different prompts get different labels.
- `format == "json"`: `{"answer":"<word>"}`.
- no `format`: `Fake answer to: <first words of the prompt text>`.
- `responder`, if set, supplies the content instead; faults still take precedence.

The *prompt text* is the `prompt` (generate) or the content of the last user message (chat); it
seeds the choices above and is what `Fault.match` looks in.

Token counts use `count_tokens` (whitespace-separated words):
    prompt_eval_count = count_tokens(" ".join(content of every message))   # chat
                      = count_tokens(system + " " + prompt)                # generate
                        (capped at `options.num_ctx` or `context_length`: Ollama silently drops
                        what does not fit, and a count at the cap is the tell)
    eval_count        = count_tokens(the full response content)
`options.num_predict` > 0 below eval_count cuts the content to that many words, with
done_reason "length". Durations are measured integer nanoseconds: the time holding a slot
(`latency`, or next to nothing) is split 1:4 between prompt_eval_duration and eval_duration, and
total_duration also holds the wait for a slot.

Production setups (a reverse proxy, TLS, thinking models):
- `require_headers`: every route wants these headers, exactly, as an authenticating proxy
  would: missing -> 401, wrong -> 403 (nginx's HTML pages; also the faults `unauthorized`,
  `forbidden`).
- `ssl_context`: serve HTTPS (the tests make a throwaway CA with trustme).
- `thinking_models`: listed with the "thinking" capability; they reason into
  `message.thinking` unless the request says `think: false`; `think` on any other model is a
  400, as in Ollama.
- A load-only request (no messages/prompt) loads the model and takes no fault; it is counted
  in `load_requests` (its body in `loads`), not `request_count` (nor `requests`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, get_args

import anyio
from aiohttp import web

from batch.testing import _wire, openai_compat
from batch.testing.schema_instance import WORDS, SchemaError, compile_schema, schema_key

__all__ = ["FAULT_KINDS", "FakeOllama", "Fault", "FaultKind", "count_tokens"]

FaultKind = Literal[
    "busy",
    "crash",
    "rate_limit",
    "bad_gateway",
    "gateway_timeout",
    "drop",
    "hang",
    "prose",
    "fenced",
    "schema_violation",
    "truncate",
    "no_counts",
    "stream_error",
    "stream_cut",
    "bad_body",
    "unknown_model",
    "unauthorized",
    "forbidden",
]
FAULT_KINDS: frozenset[str] = frozenset(get_args(FaultKind))

Responder = Callable[[dict[str, Any]], str]


@dataclass
class Fault:
    """A fault rule. `match`: a substring of the prompt text (None: any request); `times`: how
    many matching requests it affects before it is used up (None: forever)."""

    kind: FaultKind
    match: str | None = None
    times: int | None = 1


def count_tokens(text: str) -> int:
    """The fake's token count: whitespace-separated words, at least 1 for non-empty text."""
    words = len(text.split())
    return words if words or not text else 1


class _Rule:
    __slots__ = ("kind", "match", "remaining")

    def __init__(self, fault: Fault) -> None:
        self.kind: str = fault.kind
        self.match = fault.match
        self.remaining = fault.times


class FakeOllama:
    """A fake Ollama server. Use `with FakeOllama() as fake:` (own thread and loop), or await
    `serve_forever()` in a running loop. Counters are read from any thread."""

    def __init__(
        self,
        *,
        models: Sequence[str] = ("fake-model",),
        latency: float = 0.0,
        slots: int = 4,
        context_length: int = 4096,
        port: int = 0,
        hang_seconds: float = 3600.0,
        record_requests: bool = True,
        require_headers: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        thinking_models: Sequence[str] = (),
        max_queue: int | None = None,
    ) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        if latency < 0 or hang_seconds < 0:
            raise ValueError("latency and hang_seconds must not be negative")
        self.latency = latency
        self.slots = slots
        self.context_length = context_length
        self.hang_seconds = hang_seconds
        self.record_requests = record_requests
        self.responder: Responder | None = None
        self.requests: list[dict[str, Any]] = []
        self.loads: list[dict[str, Any]] = []  # bodies of load-only requests, kept apart
        self.request_count = 0
        """Chat/generate requests that arrived, load-only ones (no prompt) apart."""
        self.load_requests = 0
        """Load-only requests: no messages or prompt, just `model` (and perhaps keep_alive)."""
        self.refused = 0
        """Requests refused for missing or wrong credentials (`require_headers`)."""
        # As a reverse proxy in front of Ollama would: these headers, exactly, on every route.
        self.require_headers = dict(require_headers or {})
        self.ssl_context = ssl_context
        self.max_in_flight = 0
        self.max_generating = 0
        """Highest number of requests holding a generation slot at one instant (<= slots)."""
        self.max_queue = max_queue
        """As Ollama's OLLAMA_MAX_QUEUE: a request that finds this many waiting for a slot is
        answered 503 "server busy" (None: no limit)."""
        self.busy_replies = 0
        """Requests answered 503 because the queue was full (`max_queue`)."""
        self.queue_seconds = 0.0
        """Seconds requests spent waiting for a slot, summed: over a span of time, divided by
        it, the time-averaged number of requests waiting in the queue."""
        self._waiting = 0
        self._port = port
        self._catalog = _wire.Catalog(models, context_length, thinking_models)
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()
        self._arrivals = threading.Condition()
        self._in_flight = 0
        self._generating = 0
        self._handlers: set[asyncio.Task[Any]] = set()
        self._url: str | None = None
        self._runner: web.ServerRunner | None = None
        self._slot_sem: asyncio.Semaphore | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._routes: dict[tuple[str, str], Callable[[web.BaseRequest], Any]] = {
            ("GET", "/"): self._root,
            ("HEAD", "/"): self._root,
            ("GET", "/api/version"): self._version,
            ("GET", "/api/tags"): self._tags,
            ("GET", "/api/ps"): self._ps,
            ("POST", "/api/show"): self._show,
            ("POST", "/api/chat"): self._chat,
            ("POST", "/api/generate"): self._generate,
            **openai_compat.routes(self),  # Ollama's OpenAI-compatible /v1 routes
        }

    # ---- control, from any thread -------------------------------------------------------------

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>`; valid once started (and kept after stop)."""
        if self._url is None:
            raise RuntimeError("the fake Ollama server has not been started")
        return self._url

    def add_fault(self, fault: Fault) -> None:
        """Add a rule; rules are checked in the order added, the first live match wins."""
        if fault.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {fault.kind!r}")
        if fault.times is not None and fault.times < 1:
            raise ValueError("Fault.times must be at least 1, or None for forever")
        with self._lock:
            self._rules.append(_Rule(fault))

    def clear_faults(self) -> None:
        with self._lock:
            self._rules.clear()

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> None:
        """Block until `count` chat/generate requests have arrived in total. Raises TimeoutError.

        From async code: `await anyio.to_thread.run_sync(fake.wait_for_requests, n)`."""
        with self._arrivals:
            if not self._arrivals.wait_for(lambda: self.request_count >= count, timeout):
                raise TimeoutError(f"{self.request_count} of {count} requests arrived")

    def start(self) -> str:
        """Serve from a background thread with its own event loop; returns once listening."""
        if self._thread is not None:
            raise RuntimeError("already started")
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._thread_main, args=(ready, failure), name="fake-ollama", daemon=True
        )
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self.url

    def stop(self) -> None:
        """Stop serving, cancelling hung or slow handlers, and free the port. Idempotent."""
        thread, loop, stop_requested = self._thread, self._loop, self._stop_requested
        if thread is None:
            return
        if loop is not None and stop_requested is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop_requested.set)
        thread.join(timeout=10)
        if thread.is_alive():
            raise RuntimeError("the fake Ollama server thread did not stop")
        self._thread = None

    def __enter__(self) -> FakeOllama:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def serve_forever(
        self, host: str = "127.0.0.1", *, ready: Callable[[str], object] | None = None
    ) -> None:
        """Serve in the running (asyncio) loop until cancelled; `ready(url)` once listening."""
        await self._open(host)
        try:
            if ready is not None:
                ready(self.url)
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await self._close()

    # ---- lifecycle, in the server's loop ------------------------------------------------------

    def _thread_main(self, ready: threading.Event, failure: list[BaseException]) -> None:
        try:
            asyncio.run(self._serve_in_thread(ready, failure))
        finally:
            ready.set()  # never leave start() waiting, even if the loop failed to start

    async def _serve_in_thread(self, ready: threading.Event, failure: list[BaseException]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        try:
            await self._open("127.0.0.1")
        except BaseException as exc:
            failure.append(exc)
            return
        finally:
            ready.set()
        try:
            await self._stop_requested.wait()
        finally:
            await self._close()

    async def _open(self, host: str) -> None:
        self._slot_sem = asyncio.Semaphore(self.slots)
        # handler_cancellation: a client that disconnects cancels its generation, as in Ollama.
        server = web.Server(self._dispatch, handler_cancellation=True, access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=0.1)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, self._port, backlog=1024, ssl_context=self.ssl_context)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        port = runner.addresses[0][1]
        scheme = "https" if self.ssl_context is not None else "http"
        self._url = f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"

    async def _close(self) -> None:
        for task in list(self._handlers):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- routes -------------------------------------------------------------------------------

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        # One dict lookup instead of a router; a wrong method is a 404 too, as with gin.
        if self.require_headers and (refusal := self._refusal(request)) is not None:
            return refusal
        route = self._routes.get((request.method, request.path))
        if route is None:
            return _wire.not_found()
        response: web.StreamResponse = await route(request)
        return response

    def _refusal(self, request: web.BaseRequest) -> web.Response | None:
        for name, expected in self.require_headers.items():
            if request.headers.get(name) != expected:
                self.refused += 1
                # No credentials at all: 401; a header present but wrong: 403, as proxies do.
                kind = "unauthorized" if name.lower() not in request.headers else "forbidden"
                return _wire.canned_response(kind)
        return None

    async def _root(self, request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(text="Ollama is running", content_type="text/plain")

    async def _version(self, request: web.BaseRequest) -> web.StreamResponse:
        return _wire.json_response(200, {"version": _wire.VERSION})

    async def _tags(self, request: web.BaseRequest) -> web.StreamResponse:
        return _wire.json_response(200, self._catalog.tags())

    async def _ps(self, request: web.BaseRequest) -> web.StreamResponse:
        return _wire.json_response(200, self._catalog.ps())

    async def _show(self, request: web.BaseRequest) -> web.StreamResponse:
        body = _wire.parse_body(await request.read(), "ShowRequest")
        if isinstance(body, str):
            return _wire.error_response(400, body)
        model = body.get("model") or body.get("name")
        if not model or not isinstance(model, str):
            return _wire.error_response(400, "model is required")
        if _wire.full_name(model) not in self._catalog.names:
            return _wire.error_response(404, f"model '{model}' not found")
        return _wire.json_response(200, self._catalog.show(model))

    async def _chat(self, request: web.BaseRequest) -> web.StreamResponse:
        return await self._counted(request, chat=True)

    async def _generate(self, request: web.BaseRequest) -> web.StreamResponse:
        return await self._counted(request, chat=False)

    async def _counted(self, request: web.BaseRequest, *, chat: bool) -> web.StreamResponse:
        arrived = time.monotonic_ns()
        with self._tracked():
            return await self._completion(request, chat, arrived)

    @contextlib.contextmanager
    def _tracked(self) -> Iterator[None]:
        """A generation request in flight: counted in `max_in_flight`, cancelled by `stop()`.
        Used by every route that generates (`/api/*` here, `/v1/*` in openai_compat)."""
        self._in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self._in_flight)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            yield
        finally:
            self._in_flight -= 1
            if task is not None:
                self._handlers.discard(task)

    async def _hold_slot(self) -> tuple[int, int]:
        """Holds a generation slot for `latency`; returns when it was taken and let go (ns)."""
        assert self._slot_sem is not None
        self._waiting += 1
        queued = time.monotonic_ns()
        try:
            await self._slot_sem.acquire()
        finally:
            self._waiting -= 1
            self.queue_seconds += (time.monotonic_ns() - queued) / 1e9
        try:
            started = time.monotonic_ns()
            self._generating += 1
            self.max_generating = max(self.max_generating, self._generating)
            try:
                if self.latency:
                    await asyncio.sleep(self.latency)
            finally:
                self._generating -= 1
            return started, time.monotonic_ns()
        finally:
            self._slot_sem.release()

    def _queue_full(self) -> bool:
        assert self.max_queue is not None
        return self._generating >= self.slots and self._waiting >= self.max_queue

    # ---- chat and generate --------------------------------------------------------------------

    def _arrived(self, body: dict[str, Any] | str, chat: bool) -> bool:
        """Counts the request; True for a load-only one."""
        load_only = isinstance(body, dict) and not body.get("messages" if chat else "prompt")
        with self._arrivals:
            if load_only:
                self.load_requests += 1
            else:
                self.request_count += 1
            self._arrivals.notify_all()
        return load_only

    def _take_fault(self, text: str) -> str | None:
        if not self._rules:  # the common case in benchmarks: skip the lock
            return None
        with self._lock:
            for i, rule in enumerate(self._rules):
                if rule.match is None or rule.match in text:
                    if rule.remaining is not None:
                        rule.remaining -= 1
                        if rule.remaining == 0:
                            del self._rules[i]
                    return rule.kind
        return None

    async def _completion(
        self, request: web.BaseRequest, chat: bool, arrived: int
    ) -> web.StreamResponse:
        struct = "ChatRequest" if chat else "GenerateRequest"
        body = _wire.parse_body(await request.read(), struct)
        load_only = self._arrived(body, chat)
        if isinstance(body, str):
            return _wire.error_response(400, body)
        if self.record_requests:
            (self.loads if load_only else self.requests).append(body)
        problem = _wire.check_fields(body, struct)
        if problem is not None:
            return _wire.error_response(400, problem)

        if chat:
            messages: list[dict[str, Any]] = body.get("messages") or []
            users = [m for m in messages if m.get("role") == "user"]
            text = (users[-1].get("content") or "") if users else ""
            whole = " ".join(m.get("content") or "" for m in messages)
        else:
            text = body.get("prompt") or ""
            system = body.get("system") or ""
            whole = f"{system} {text}" if system else text

        load_only = not (body.get("messages") if chat else text)
        fault = None if load_only else self._take_fault(text)
        if fault in _wire.CANNED:
            return _wire.canned_response(fault)
        if fault == "drop":
            return await _drop(request)
        if fault == "hang":
            await asyncio.sleep(self.hang_seconds)
            return await _drop(request)

        model = body.get("model") or ""
        if not model:
            return _wire.error_response(400, "model is required")
        name = _wire.full_name(model)
        if fault == "unknown_model" or name not in self._catalog.names:
            return _wire.error_response(404, f"model '{model}' not found")
        thinks = name in self._catalog.thinking and body.get("think") is not False
        if body.get("think") not in (None, False) and name not in self._catalog.thinking:
            return _wire.error_response(400, f'"{model}" does not support thinking')
        self._catalog.loaded.add(name)
        stream = body.get("stream") is not False  # true when omitted, as in Ollama

        if load_only:
            # Nothing to generate: Ollama just loads the model and says so.
            payload = _wire.envelope(model, chat, "")
            payload["done_reason"] = "load"
            return _wire.json_response(200, payload)

        planned = self._content(body, text, fault, stream)
        if isinstance(planned, web.Response):
            return planned
        content, done_reason = planned

        if self.max_queue is not None and self._queue_full():
            self.busy_replies += 1
            return _wire.canned_response("busy")
        started, generated = await self._hold_slot()

        if fault == "stream_error" and not stream:
            return _wire.error_response(500, _wire.STREAM_ERROR)
        num_ctx = (body.get("options") or {}).get("num_ctx")
        if not isinstance(num_ctx, int) or num_ctx <= 0:
            num_ctx = self.context_length
        final = _wire.envelope(model, chat, "" if stream else content)
        final["done_reason"] = done_reason
        thinking = _wire.thinking(text) if thinks and not stream else ""
        if thinking:  # thinking models think unless told `think: false`, as in Ollama
            (final["message"] if chat else final)["thinking"] = thinking
        final.update(
            _wire.metrics(
                generated - arrived,
                generated - started,
                min(count_tokens(whole), num_ctx),
                count_tokens(content) + count_tokens(thinking),
                counts=fault != "no_counts",
            )
        )
        if not stream:
            if fault == "bad_body":
                headers = {"Content-Type": _wire.JSON_TYPE}
                return web.Response(body=_wire.partial(final), headers=headers)
            return _wire.json_response(200, final)
        return await _stream(request, model, chat, content, final, fault)

    def _content(
        self, body: dict[str, Any], text: str, fault: str | None, stream: bool
    ) -> tuple[str, str] | web.Response:
        """The reply content and done_reason, or an error response."""
        fmt = body.get("format")
        compiled = None
        if isinstance(fmt, dict):
            try:
                compiled = compile_schema(schema_key(fmt))
            except SchemaError as exc:
                return _wire.error_response(500, f"fake ollama cannot satisfy this format: {exc}")
        elif fmt not in (None, "", "json"):
            return _wire.error_response(400, _wire.INVALID_FORMAT)

        seed = zlib.crc32(text.encode())
        if fault == "prose":
            content = "Sure! The label is positive."
        elif fault == "schema_violation":
            content = compiled.violation if compiled else '{"unexpected":true}'
        elif self.responder is not None:
            try:
                content = self.responder(body)
            except Exception as exc:  # report the test's bug to the client; keep serving
                return _wire.error_response(500, f"fake ollama responder raised {exc!r}")
        elif compiled is not None:
            content = compiled.instance(seed)
        elif fmt == "json":
            content = f'{{"answer":"{WORDS[seed % len(WORDS)]}"}}'
        else:
            content = "Fake answer to: " + " ".join(text.split()[:8])

        if fault == "fenced":
            content = f"```json\n{content}\n```"
        if fault == "truncate" or (fault == "stream_cut" and not stream):
            return content[: len(content) // 2], "length"
        num_predict = (body.get("options") or {}).get("num_predict")
        if isinstance(num_predict, int) and 0 < num_predict < count_tokens(content):
            return _wire.cut_words(content, num_predict), "length"
        return content, "stop"


async def _stream(
    request: web.BaseRequest,
    model: str,
    chat: bool,
    content: str,
    final: dict[str, Any],
    fault: str | None,
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": _wire.NDJSON_TYPE})
    await response.prepare(request)
    lines = []
    if fault == "bad_body":
        lines.append(_wire.partial(final))
    else:
        pieces = _wire.fragments(content)
        for piece in pieces[:2] if fault == "stream_error" else pieces:
            lines.append(_wire.dumps(_wire.envelope(model, chat, piece, done=False)))
        if fault == "stream_error":
            lines.append(_wire.dumps({"error": _wire.STREAM_ERROR}))
        elif fault != "stream_cut":
            final["created_at"] = _wire.now()
            lines.append(_wire.dumps(final))
    # One write: clients read lines, not HTTP chunks, and this keeps the fake fast.
    await response.write(b"\n".join(lines) + b"\n")
    await response.write_eof()
    return response


async def _drop(request: web.BaseRequest) -> web.StreamResponse:
    """Close the TCP connection without a response; the client sees a disconnect."""
    transport = request.transport
    if transport is not None:
        transport.close()
    # Losing the connection cancels this handler (handler_cancellation), so this ends at once.
    await anyio.sleep_forever()
    raise AssertionError("unreachable")
