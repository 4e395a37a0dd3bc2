"""What one Ollama host is, read once, and the warnings it earns: `/api/version` (shown in the
summary's `by_host`), a model family that Ollama runs one request at a time, a server too old to
refuse over-long prompts, and rows whose options would reload the model between them."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio

from batch.core.ollama_options import reload_options
from batch.serving.model_check import ONE_SLOT_FAMILIES, ModelFacts

log = logging.getLogger(__name__)

TRUNCATE_FIELD_SINCE = (0, 12, 6)  # `truncate` on /api/chat; older servers ignore it


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in version.lstrip("v").split("-")[0].split("."))


class ServerNotes:
    def __init__(
        self, name: str, concurrency: int, fetch_version: Callable[[], Awaitable[str | None]]
    ) -> None:
        self._name = name
        self._concurrency = concurrency
        self._fetch_version = fetch_version
        self.version: str | None = None
        self._version_read = False
        self._models: set[str] = set()
        self._reload_options: dict[str, dict[str, Any]] = {}
        self._warned_reload: set[str] = set()
        self._lock = anyio.Lock()

    async def first_use(
        self, model: str, facts: ModelFacts, also: Callable[[str], Awaitable[None]]
    ) -> None:
        """Once per model, before its first row is sent (the others wait): reads the server's
        version (once per host), warns, and runs `also(model)`."""
        if model in self._models:
            return
        async with self._lock:
            if model in self._models:
                return
            if not self._version_read:
                self._version_read = True
                self.version = await self._fetch_version()
                log.debug("%s runs Ollama %s", self._name, self.version or "(version unknown)")
                self._warn_if_old()
            self._warn_one_slot(model, facts)
            await also(model)
            self._models.add(model)

    def _warn_one_slot(self, model: str, facts: ModelFacts) -> None:
        if self._concurrency > 1 and facts.family in ONE_SLOT_FAMILIES:
            log.warning(
                "%s: %s is a %s model, which Ollama runs one request at a time whatever "
                "OLLAMA_NUM_PARALLEL says; a concurrency of %d there only queues rows at the "
                "server: give that host #1 (or --concurrency 1)",
                self._name,
                model,
                facts.family,
                self._concurrency,
            )

    def _warn_if_old(self) -> None:
        if self.version and version_tuple(self.version) < TRUNCATE_FIELD_SINCE:
            log.warning(
                "%s runs Ollama %s, older than 0.12.6: it ignores `truncate`, so it drops the "
                "first messages of a long row without a sign (a cut single prompt is still "
                "seen); upgrade the server",
                self._name,
                self.version,
            )

    def options_sent(self, model: str, options: Mapping[str, Any]) -> None:
        """Warns once per model when rows change the options that reload it."""
        chosen = reload_options(options)
        before = self._reload_options.get(model)
        self._reload_options[model] = chosen
        if before is not None and before != chosen and model not in self._warned_reload:
            self._warned_reload.add(model)
            log.warning(
                "%s: rows send %s with different values (%s, then %s): Ollama reloads %s each "
                "time they change, which can cost more than the rows; set them once with "
                "--option",
                self._name,
                ", ".join(sorted(set(before) | set(chosen))),
                before or "server defaults",
                chosen or "server defaults",
                model,
            )
