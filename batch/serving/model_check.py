"""What a host knows about a model: checked once, before the model's first row is sent.

`/api/show` fails fast on a typo (HTTP 404) and gives the model's trained context length
(`model_info["<arch>.context_length"]`) and any `num_ctx` its Modelfile sets. The context a
request actually runs with is, in order: the request's own `num_ctx`; the Modelfile's; what
`/api/ps` reports once the model is loaded (the server's default, which depends on its VRAM and
OLLAMA_CONTEXT_LENGTH; it is per slot); else the trained length. Ollama caps `num_ctx` at the
trained length, and raises it to 2048 for vision models (`server/sched.go`, getRunner).

Some older servers leave `model_info` out of `/api/show`; the client's model then refuses the
answer, so the backend reads it with `facts_from_show_body` instead.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import anyio
import ollama

from batch.core.errors import BatchError, FatalRunError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelFacts:
    trained_context: int | None = None
    modelfile_num_ctx: int | None = None
    capabilities: frozenset[str] | None = None  # None: the host would not say
    family: str | None = None

    @property
    def vision(self) -> bool:
        return self.capabilities is not None and "vision" in self.capabilities


UNKNOWN = ModelFacts()
VISION_MIN_CONTEXT = 2048
# Families Ollama runs with one slot whatever OLLAMA_NUM_PARALLEL says (server/sched.go, load).
ONE_SLOT_FAMILIES = frozenset(
    {"mllama", "qwen3vl", "qwen3vlmoe", "qwen35", "qwen35moe", "qwen3next", "lfm2", "lfm2moe"}
    | {"nemotron_h", "nemotron_h_moe", "nemotron_h_omni"}
)


def full_name(model: str) -> str:
    """`name` and `name:latest` are one model, as Ollama sees it."""
    return model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"


def facts_from_show(shown: ollama.ShowResponse) -> ModelFacts:
    trained = None
    for key, value in (shown.modelinfo or {}).items():
        if key.endswith(".context_length") and isinstance(value, int) and value > 0:
            trained = value
    num_ctx = None
    for line in (shown.parameters or "").splitlines():
        key, _, value = line.strip().partition(" ")
        if key == "num_ctx" and value.strip().isdigit():
            num_ctx = int(value.strip())
    capabilities = frozenset(shown.capabilities) if shown.capabilities is not None else None
    family = shown.details.family if shown.details else None
    return ModelFacts(trained, num_ctx, capabilities, family or None)


def show_response(body: Mapping[str, Any]) -> ollama.ShowResponse:
    """`/api/show`'s answer, also from an older server that leaves out `model_info`."""
    return ollama.ShowResponse.model_validate({"model_info": None, **body})


class ModelCheck:
    """Facts per model for one host. `show` and `ps` raise the backend's errors (`Transient`
    is not remembered, so the row's retry asks again; a fatal error is, for every row)."""

    def __init__(
        self,
        show: Callable[[str], Awaitable[ollama.ShowResponse | None]],
        ps: Callable[[], Awaitable[ollama.ProcessResponse | None]],
    ) -> None:
        self._show = show
        self._ps = ps
        self._facts: dict[str, ModelFacts | BatchError] = {}
        self._loaded_context: dict[str, int | None] = {}
        self._lock = anyio.Lock()

    async def facts(self, model: str) -> ModelFacts:
        known = self._facts.get(model)
        if known is None:
            async with self._lock:  # one /api/show per model, however many rows wait
                known = self._facts.get(model)
                if known is None:
                    try:
                        shown = await self._show(model)
                    except FatalRunError as exc:
                        self._facts[model] = exc
                        raise
                    known = self._facts[model] = facts_from_show(shown) if shown else UNKNOWN
                    log.debug("model %s: %s", model, known)
        if isinstance(known, BatchError):
            raise known
        return known

    def family(self, model: str) -> str | None:
        """The model's family, once `facts` has read it (None before, or when unknown)."""
        known = self._facts.get(model)
        return known.family if isinstance(known, ModelFacts) else None

    async def context_length(self, model: str, options: Mapping[str, Any]) -> int | None:
        facts = await self.facts(model)
        requested = options.get("num_ctx")
        if not (isinstance(requested, int) and requested > 0):
            requested = facts.modelfile_num_ctx or await self._loaded(model)
        if requested and facts.vision:
            requested = max(requested, VISION_MIN_CONTEXT)
        if requested and facts.trained_context:
            return min(requested, facts.trained_context)
        return requested or facts.trained_context

    async def _loaded(self, model: str) -> int | None:
        if model not in self._loaded_context:
            async with self._lock:
                if model not in self._loaded_context:
                    self._loaded_context[model] = await self._ps_context(model)
        return self._loaded_context[model]

    async def _ps_context(self, model: str) -> int | None:
        try:
            running = await self._ps()
        except BatchError as exc:  # the context stays unknown: nothing else depends on it
            log.debug("cannot read the loaded context of %s: %s", model, exc)
            return None
        for entry in running.models if running else ():
            if full_name(entry.model or entry.name or "") == full_name(model):
                return entry.context_length or None
        return None

    async def expiry(self, model: str) -> datetime | Literal[False] | None:
        """When the loaded model is due to unload; None if loaded with no expiry given;
        False if it is not loaded (or the host would not say)."""
        try:
            running = await self._ps()
        except BatchError:
            return False
        for entry in running.models if running else ():
            if full_name(entry.model or entry.name or "") == full_name(model):
                return entry.expires_at
        return False
