"""Hand a model back at the end of a run as the run found it.

Ollama keeps the `keep_alive` a request gave a loaded model until another request sets one; a
request without it changes nothing, and a request whose load options (`num_ctx`, `num_batch`,
`num_gpu`...) differ from the loaded model's reloads it (`server/sched.go`, `needsReload` and
`processPending`). So the hand-back is a load-only request that sets keep_alive explicitly and
repeats the run's load options: the model keeps the expiry it had when the run found it (if that
was later than the server default from now), else the default, and is not reloaded. A model no
longer loaded is left alone, never loaded again just for this.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import anyio

from batch.core.ollama_options import reload_options
from batch.serving.model_check import ModelCheck

log = logging.getLogger(__name__)

HAND_BACK_SECONDS = 5.0
SERVER_DEFAULT_KEEP_ALIVE = "5m"  # Ollama's own, when OLLAMA_KEEP_ALIVE is not set
SERVER_DEFAULT_SECONDS = 300.0

LoadOnly = Callable[[str, float | str, Any], Awaitable[None]]


class HandBack:
    def __init__(self, name: str, models: ModelCheck, load_only: LoadOnly, active: bool) -> None:
        self._name = name
        self._models = models
        self._load_only = load_only
        self._active = active  # only when the run chose the keep-alive itself
        self._found: dict[str, datetime | Literal[False] | None] = {}
        self._options: dict[str, dict[str, Any]] = {}  # model -> load options last sent

    async def found(self, model: str) -> None:
        """Notes the model's expiry before the run's first request to it."""
        if self._active:
            self._found[model] = await self._models.expiry(model)

    def used(self, model: str, options: Mapping[str, Any]) -> None:
        if self._active:
            self._options[model] = reload_options(options)

    async def run(self) -> None:
        if not self._options:
            return
        with anyio.move_on_after(HAND_BACK_SECONDS, shield=True):
            for model in sorted(self._options):
                await self._hand_back(model)

    async def _hand_back(self, model: str) -> None:
        if await self._models.expiry(model) is False:
            return
        keep_alive = keep_alive_as_found(self._found.get(model, False), datetime.now(UTC))
        try:
            await self._load_only(model, keep_alive, self._options[model] or None)
        except Exception as exc:  # the run is over; this must not turn it into a failure
            log.debug("%s: could not hand %s back: %s", self._name, model, exc)


def keep_alive_as_found(found: datetime | Literal[False] | None, now: datetime) -> float | str:
    """The keep_alive that leaves the model expiring as when found (in seconds), or the
    server's default when that is sooner, unknown, or the model was not loaded."""
    if isinstance(found, datetime):
        left = (found.astimezone(UTC) - now).total_seconds()
        if left > SERVER_DEFAULT_SECONDS:
            return float(int(left))
    return SERVER_DEFAULT_KEEP_ALIVE
