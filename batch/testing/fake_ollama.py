"""A fake Ollama server: real HTTP on loopback, faults on demand, fast enough for benchmarks.

It answers `/api/chat` and `/api/generate` like Ollama does (see ollama-api.md), with content
that is deterministic for a given request:

- `format` is a JSON Schema: a conforming instance, compact JSON (`schema_instance`); enum
  values are picked by a CRC-32 of the prompt text, so different prompts get different labels.
- `format == "json"`: `{"answer":"<word>"}`.
- no `format`: `Fake answer to: <first words of the prompt text>`.
- `responder`, if set, supplies the content instead; faults still take precedence.
- `"logprobs": true` (non-streaming): `logprobs` lists the content's tokens (runs of word
  characters, runs of the rest: `{"`, `label`, `":"`, `pos`, `"}`) with `token_logprob(token)`,
  by default -len(token)/100; `token_logprob = None` plays a server before Ollama 0.12.11,
  which ignores the field.

The *prompt text* is the `prompt` (generate) or the content of the last user message (chat); it
seeds the choices above and is what `Fault.match` looks in.

Token counts use `count_tokens` (whitespace-separated words):
    prompt_eval_count = count_tokens(" ".join(content of every message read))   # chat
                      = count_tokens(system + " " + prompt)                     # generate
                        (fitted to `options.num_ctx`, else `context_length`, as the server
                        `version` does: see _behaviour.py)
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

Ollama as it really behaves, by server version (issue 12; the rules in _behaviour.py):
- `version`: `CURRENT_VERSION` (llama-server runner, the default) cuts an over-long prompt to
  about half the context; `GO_RUNNER_VERSION` to the context; both answer `truncate: false` with
  a 400; versions before 0.12.6 ignore `truncate`. Without it, the oldest non-system messages are
  dropped first (`messages_read` shows what the model read). `context_shift=False`: a 400.
- Options: a wrong type is a 500 naming it; an unknown name is dropped (`dropped_options`).
  Each loaded model keeps the `keep_alive` it was last given (`keep_alive`, shown as /api/ps's
  `expires_at`); changed load options reload it (`reloads`).
- `vision_models`: family qwen3vl, capability vision, `num_ctx` at least 2048.
- `model_info=False`: /api/show without `model_info`; `check_host_header=True`: a non-local
  `Host` gets 403 with no body; a wrong method is a 405.
- Faults `repetition` (done: false, no done_reason, no counts) and `signin` (a cloud model's 401).

Transport faults: `drop` closes the connection before any answer, `hang` answers nothing for
`hang_seconds`; `drop_mid_reply` sends the status, the headers (announcing the whole body) and
half the body (streamed: the first chunks), then closes the connection; `trickle` sends the
status and headers, then the body a byte every `TRICKLE_SECONDS` (no read waits long, the whole
takes minutes). `connections` counts the
TCP connections requests came on.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, get_args

import anyio
from aiohttp import web

from batch.testing import _behaviour, _wire
from batch.testing._behaviour import CURRENT_VERSION, GO_RUNNER_VERSION, ServerVersion
from batch.testing.schema_instance import WORDS, SchemaError, compile_schema, schema_key

__all__ = [
    "CURRENT_VERSION",
    "FAULT_KINDS",
    "GO_RUNNER_VERSION",
    "FakeOllama",
    "Fault",
    "FaultKind",
    "Handler",
    "Reply",
    "count_tokens",
    "drop_connection",
]

FaultKind = Literal[
    "busy",
    "crash",
    "rate_limit",
    "bad_gateway",
    "gateway_timeout",
    "drop",
    "drop_mid_reply",
    "trickle",
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
    "repetition",
    "signin",
]
FAULT_KINDS: frozenset[str] = frozenset(get_args(FaultKind))

SIGNIN_URL = "https://ollama.com/connect?name=fake&key=fake"
TRICKLE_SECONDS = 0.1
Responder = Callable[[dict[str, Any]], str]
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
TOKEN = re.compile(r"\w+|\W+")  # the fake's tokenizer, for logprobs


def default_token_logprob(token: str) -> float:
    return -len(token) / 100


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


@dataclass
class Reply:
    """One generated answer, before a route renders it (`/api/chat` here, `/v1` in scripts/).

    `prompt_eval_count`/`eval_count` are 0 where Ollama leaves them out (the `no_counts`
    fault); `fault` is the fault that shaped it, for the faults a route renders itself
    (`stream_error`, `stream_cut`, `bad_body`)."""

    model: str
    content: str
    done_reason: str
    prompt_eval_count: int
    eval_count: int
    thinking: str
    fault: str | None
    arrived_ns: int
    started_ns: int
    finished_ns: int


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
        version: str = CURRENT_VERSION,
        context_shift: bool = True,
        vision_models: Sequence[str] = (),
        model_info: bool = True,
        check_host_header: bool = False,
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
        self.token_logprob: Callable[[str], float] | None = default_token_logprob
        self.requests: list[dict[str, Any]] = []
        self.loads: list[dict[str, Any]] = []  # bodies of load-only requests, kept apart
        self.traceparents: list[str | None] = []
        """Each recorded request's W3C `traceparent` header (None: it had none)."""
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
        self._peers: set[Any] = set()
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
        self._catalog = _wire.Catalog(
            models, context_length, thinking_models, vision_models, model_info=model_info
        )
        # How this Ollama behaves (see _behaviour.py): its version decides truncation.
        self.version = version
        self._server = ServerVersion(version)
        self.context_shift = context_shift
        """False: a model run without context shift, which refuses a prompt it would cut."""
        self.check_host_header = check_host_header
        """True: a loopback Ollama's Host check; a foreign `Host` gets 403 with no body."""
        self.keep_alive: dict[str, Any] = {}
        """The keep-alive each loaded model was last given (the server default on loading)."""
        self.keep_alive_changes = 0
        """Requests that set a loaded model's keep-alive."""
        self.reloads = 0
        """Loads of a model already loaded, because a request changed its runner options."""
        self.dropped_options: list[str] = []
        """Option names the server did not know and dropped, as Ollama does with a warning."""
        self.messages_read: list[list[dict[str, Any]]] = []
        """Per chat request that reached the model: the messages it read, after the server
        dropped what did not fit (kept only with `record_requests`)."""
        self._runner_options: dict[str, dict[str, Any]] = {}
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

    def add_routes(self, routes: Mapping[tuple[str, str], Handler]) -> None:
        """More routes, keyed by (method, path): e.g. the OpenAI-compatible `/v1` routes the
        benchmarks mount (scripts/fake_openai.py). Call before `start()`."""
        self._routes.update(routes)

    @property
    def connections(self) -> int:
        """TCP connections that requests came on (a client that reuses its connections opens
        as many as it had requests in flight at once)."""
        return len(self._peers)

    @property
    def model_names(self) -> tuple[str, ...]:
        """The models served, as full names (`name:tag`)."""
        return self._catalog.names

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
        if request.transport is not None:
            self._peers.add(request.transport.get_extra_info("peername"))
        # One dict lookup instead of a router; a wrong method is a 405, as in Ollama.
        if self.require_headers and (refusal := self._refusal(request)) is not None:
            return refusal
        if self.check_host_header and not _behaviour.local_host(request.host):
            return web.Response(status=403)  # allowedHostsMiddleware: no body at all
        route = self._routes.get((request.method, request.path))
        if route is None:
            known = any(path == request.path for _, path in self._routes)
            return _wire.method_not_allowed() if known else _wire.not_found()
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
        return _wire.json_response(200, {"version": self.version})

    async def _tags(self, request: web.BaseRequest) -> web.StreamResponse:
        return _wire.json_response(200, self._catalog.tags())

    async def _ps(self, request: web.BaseRequest) -> web.StreamResponse:
        expires = {n: _behaviour.expires_at(k) for n, k in self.keep_alive.items()}
        return _wire.json_response(200, self._catalog.ps(expires))

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
        with self.in_flight():
            return await self._completion(request, chat, arrived)

    # ---- what every generating route uses (`/api/*` here, `/v1/*` in scripts/) ---------------

    def count_arrival(self, *, load_only: bool = False) -> None:
        """Counts a request in `request_count` (or `load_requests`) and wakes
        `wait_for_requests`."""
        with self._arrivals:
            if load_only:
                self.load_requests += 1
            else:
                self.request_count += 1
            self._arrivals.notify_all()

    def record(self, body: dict[str, Any], *, load_only: bool = False) -> None:
        """Keeps a request body in `requests` (or `loads`), unless `record_requests` is off."""
        if self.record_requests:
            (self.loads if load_only else self.requests).append(body)

    @contextlib.contextmanager
    def in_flight(self) -> Iterator[None]:
        """A generation request in flight: counted in `max_in_flight`, cancelled by `stop()`."""
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

    async def reply(
        self,
        request: web.BaseRequest,
        body: dict[str, Any],
        *,
        chat: bool = True,
        stream: bool = False,
        arrived_ns: int | None = None,
    ) -> Reply | web.StreamResponse:
        """The answer to an `/api/chat` (or, `chat=False`, `/api/generate`) request body: takes
        a fault, checks the model, plans the content, holds a slot for `latency` and counts the
        tokens. Anything but a `Reply` is the response to send as it is, in `/api/chat`'s shape
        (an error, or a dropped connection)."""
        arrived = time.monotonic_ns() if arrived_ns is None else arrived_ns
        text, _ = _prompt_text(body, chat)
        fault = self._take_fault(text)
        if fault in _wire.CANNED:
            return _wire.canned_response(fault)
        if fault == "signin":
            return _wire.json_response(401, {"error": "unauthorized", "signin_url": SIGNIN_URL})
        if fault == "drop":
            return await drop_connection(request)
        if fault == "hang":
            await asyncio.sleep(self.hang_seconds)
            return await drop_connection(request)
        model = body.get("model") or ""
        checked = self._checked_model(model, body, fault)
        if isinstance(checked, web.Response):
            return checked
        thinks, num_ctx = checked
        prompt_tokens = self._fitted_prompt(body, chat, num_ctx)
        if isinstance(prompt_tokens, web.Response):
            return prompt_tokens
        planned = self._content(body, text, fault, stream)
        if isinstance(planned, web.Response):
            return planned
        content, done_reason = planned
        if self.max_queue is not None and self._queue_full():
            self.busy_replies += 1
            return _wire.canned_response("busy")
        started, finished = await self._hold_slot()
        if fault == "stream_error" and not stream:
            return _wire.error_response(500, _wire.STREAM_ERROR)
        thinking = _wire.thinking(text) if thinks and not stream else ""
        counts = fault not in ("no_counts", "repetition")
        return Reply(
            model=model,
            content=content,
            done_reason=done_reason,
            prompt_eval_count=prompt_tokens if counts else 0,
            eval_count=count_tokens(content) + count_tokens(thinking) if counts else 0,
            thinking=thinking,
            fault=fault,
            arrived_ns=arrived,
            started_ns=started,
            finished_ns=finished,
        )

    def _checked_model(
        self, model: str, body: dict[str, Any], fault: str | None
    ) -> tuple[bool, int] | web.Response:
        """Loads the model as the request asks (options, keep-alive, reload); returns whether
        it thinks on this request and the context it runs with, or the error response."""
        if not model:
            return _wire.error_response(400, "model is required")
        name = _wire.full_name(model)
        if fault == "unknown_model" or name not in self._catalog.names:
            return _wire.error_response(404, f"model '{model}' not found")
        think = body.get("think")
        if isinstance(think, str) and think not in _behaviour.THINK_LEVELS:
            return _wire.error_response(400, f'invalid think value: "{think}"')
        if think not in (None, False) and name not in self._catalog.thinking:
            return _wire.error_response(400, f'"{model}" does not support thinking')
        options = body.get("options") or {}
        problem, dropped = _behaviour.option_error(options, self._server)
        if problem is not None:
            return _wire.error_response(500, problem)
        self.dropped_options.extend(dropped)
        num_ctx = options.get("num_ctx")
        if not isinstance(num_ctx, int) or num_ctx <= 0:
            num_ctx = self.context_length
        if name in self._catalog.vision:
            num_ctx = max(num_ctx, _behaviour.VISION_MIN_CONTEXT)
        self._load_model(name, options, num_ctx, body)
        return name in self._catalog.thinking and think is not False, num_ctx

    def _load_model(
        self, name: str, options: Mapping[str, Any], num_ctx: int, body: Mapping[str, Any]
    ) -> None:
        runner = {**_behaviour.runner_options(options), "num_ctx": num_ctx}
        loaded = name in self._catalog.loaded
        if loaded and self._runner_options.get(name) != runner:
            self.reloads += 1
        if not loaded or self._runner_options.get(name) != runner:
            # A (re)load starts from the server's default keep-alive, as the scheduler does.
            self.keep_alive[name] = _behaviour.DEFAULT_KEEP_ALIVE
        self._runner_options[name] = runner
        self._catalog.loaded[name] = num_ctx
        if body.get("keep_alive") is not None:
            self.keep_alive[name] = body["keep_alive"]
            self.keep_alive_changes += 1

    def _fitted_prompt(self, body: dict[str, Any], chat: bool, num_ctx: int) -> int | web.Response:
        """The prompt tokens the model reads, after Ollama fits the prompt to the context as
        this server version does (see _behaviour.py), or its 400."""
        truncate = body.get("truncate") is not False or not self._server.honours_truncate
        messages: list[dict[str, Any]] = list(body.get("messages") or []) if chat else []
        if chat and truncate:
            messages = _dropped_to_fit(messages, num_ctx)
        whole = (
            " ".join(m.get("content") or "" for m in messages)
            if chat
            else _prompt_text(body, chat)[1]
        )
        tokens = count_tokens(whole)
        if tokens > num_ctx:
            if not truncate:
                return _wire.error_response(400, self._server.too_long(tokens, num_ctx))
            if self._server.llama_server and not self.context_shift:
                return _wire.error_response(400, _behaviour.NO_SHIFT_ERROR)
            num_keep = (body.get("options") or {}).get("num_keep", _behaviour.DEFAULT_NUM_KEEP)
            tokens = self._server.cut_to(num_ctx, num_keep if isinstance(num_keep, int) else 4)
        if chat and self.record_requests:
            self.messages_read.append(messages)
        return tokens

    def _load(self, body: dict[str, Any], chat: bool) -> web.StreamResponse:
        """Nothing to generate: Ollama loads the model (or, with keep_alive 0, unloads it) and
        says so. No fault applies."""
        model = body.get("model") or ""
        if body.get("keep_alive") in (0, "0", "0s") and model:
            name = _wire.full_name(model)
            self._catalog.loaded.pop(name, None)
            self.keep_alive.pop(name, None)
            payload = _wire.envelope(model, chat, "")
            payload["done_reason"] = "unload"
            return _wire.json_response(200, payload)
        checked = self._checked_model(model, body, None)
        if isinstance(checked, web.Response):
            return checked
        payload = _wire.envelope(model, chat, "")
        payload["done_reason"] = "load"
        return _wire.json_response(200, payload)

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

    # ---- chat and generate --------------------------------------------------------------------

    async def _completion(
        self, request: web.BaseRequest, chat: bool, arrived: int
    ) -> web.StreamResponse:
        struct = "ChatRequest" if chat else "GenerateRequest"
        body = _wire.parse_body(await request.read(), struct)
        load_only = isinstance(body, dict) and not body.get("messages" if chat else "prompt")
        self.count_arrival(load_only=load_only)
        if isinstance(body, str):
            return _wire.error_response(400, body)
        self.record(body, load_only=load_only)
        if self.record_requests and not load_only:
            self.traceparents.append(request.headers.get("traceparent"))
        problem = _wire.check_fields(body, struct)
        if problem is not None:
            return _wire.error_response(400, problem)
        stream = body.get("stream") is not False  # true when omitted, as in Ollama
        if load_only:
            return self._load(body, chat)
        reply = await self.reply(request, body, chat=chat, stream=stream, arrived_ns=arrived)
        if not isinstance(reply, Reply):
            return reply
        if reply.fault == "repetition":
            return await _repeating(request, reply, chat, stream)
        final = _wire.envelope(reply.model, chat, "" if stream else reply.content)
        final["done_reason"] = reply.done_reason
        if reply.thinking:  # thinking models think unless told `think: false`, as in Ollama
            (final["message"] if chat else final)["thinking"] = reply.thinking
        final.update(
            _wire.metrics(
                reply.finished_ns - reply.arrived_ns,
                reply.finished_ns - reply.started_ns,
                reply.prompt_eval_count,
                reply.eval_count,
                counts=reply.fault != "no_counts",
            )
        )
        if not stream:
            if body.get("logprobs") and self.token_logprob is not None:
                lp = self.token_logprob
                final["logprobs"] = [
                    {"token": t, "logprob": lp(t), "bytes": list(t.encode())}
                    for t in TOKEN.findall(reply.content)
                ]
            if reply.fault == "bad_body":
                headers = {"Content-Type": _wire.JSON_TYPE}
                return web.Response(body=_wire.partial(final), headers=headers)
            if reply.fault == "drop_mid_reply":
                return await _cut_off(request, _wire.dumps(final))
            if reply.fault == "trickle":
                return await _trickle(request, _wire.dumps(final))
            return _wire.json_response(200, final)
        return await _stream(request, reply.model, chat, reply.content, final, reply.fault)

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
        elif fault == "drop_mid_reply":
            await response.write(lines[0] + b"\n")
            return await drop_connection(request)
        elif fault != "stream_cut":
            final["created_at"] = _wire.now()
            lines.append(_wire.dumps(final))
    # One write: clients read lines, not HTTP chunks, and this keeps the fake fast.
    await response.write(b"\n".join(lines) + b"\n")
    await response.write_eof()
    return response


def _dropped_to_fit(messages: list[dict[str, Any]], num_ctx: int) -> list[dict[str, Any]]:
    """Ollama's chatPrompt: drop the oldest messages until the prompt fits, keeping the system
    messages among them and always the latest message."""
    for start in range(len(messages)):
        kept = [m for m in messages[:start] if m.get("role") == "system"] + messages[start:]
        if count_tokens(" ".join(m.get("content") or "" for m in kept)) <= num_ctx:
            return kept
    return [m for m in messages[:-1] if m.get("role") == "system"] + messages[-1:]


def _prompt_text(body: dict[str, Any], chat: bool) -> tuple[str, str]:
    """The prompt text (faults match in it, choices are seeded by it) and the whole prompt."""
    if chat:
        messages: list[dict[str, Any]] = body.get("messages") or []
        users = [m for m in messages if m.get("role") == "user"]
        text = (users[-1].get("content") or "") if users else ""
        return text, " ".join(m.get("content") or "" for m in messages)
    text = body.get("prompt") or ""
    system = body.get("system") or ""
    return text, f"{system} {text}" if system else text


async def _repeating(
    request: web.BaseRequest, reply: Reply, chat: bool, stream: bool
) -> web.StreamResponse:
    """What Ollama sends when its runner stops a reply that repeats one token: the text so far,
    `done: false`, no done_reason and no counts; streamed, the stream just ends."""
    content = reply.content + " again" * 8
    if not stream:
        return _wire.json_response(200, _wire.envelope(reply.model, chat, content, done=False))
    response = web.StreamResponse(headers={"Content-Type": _wire.NDJSON_TYPE})
    await response.prepare(request)
    pieces = [_wire.envelope(reply.model, chat, p, done=False) for p in _wire.fragments(content)]
    await response.write(b"".join(_wire.dumps(p) + b"\n" for p in pieces))
    await response.write_eof()
    return response


async def _cut_off(request: web.BaseRequest, body: bytes) -> web.StreamResponse:
    """A 200 whose headers announce all of `body`, half of it, then the connection closed."""
    response = web.StreamResponse(headers={"Content-Type": _wire.JSON_TYPE})
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    return await drop_connection(request)


async def _trickle(request: web.BaseRequest, body: bytes) -> web.StreamResponse:
    """A 200 whose body comes a byte at a time: each read is quick, the whole reply is not."""
    response = web.StreamResponse(headers={"Content-Type": _wire.JSON_TYPE})
    response.content_length = len(body)
    await response.prepare(request)
    for byte in body:
        await asyncio.sleep(TRICKLE_SECONDS)
        await response.write(bytes([byte]))
    await response.write_eof()
    return response


async def drop_connection(request: web.BaseRequest) -> web.StreamResponse:
    """Close the TCP connection without a response; the client sees a disconnect."""
    transport = request.transport
    if transport is not None:
        transport.close()
    # Losing the connection cancels this handler (handler_cancellation), so this ends at once.
    await anyio.sleep_forever()
    raise AssertionError("unreachable")
