"""How a real Ollama treats a request, by server version: what the fake server reproduces.

Read from Ollama's source (the file and function named at each rule):
- Too-long input (`server/prompt.go` chatPrompt; `llm/llama_server.go`
  completionPromptForRequest). Unless the request says `"truncate": false` (honoured from
  v0.12.6; older servers ignore the field), the oldest non-system messages are dropped until the
  prompt fits, the latest message always kept. A prompt still too long is cut: the Go runners
  (up to v0.24) keep `num_ctx` tokens; the llama-server runner (v0.30 on) keeps
  `num_ctx - max((num_ctx - num_keep) / 2, 1)`, or refuses with a 400 when the model runs with
  context shift off. With `"truncate": false` an over-long prompt is a 400.
- Options (`api/types.go`, FromMap): a wrong type is a 500 naming the option; an unknown name
  is dropped. The `Runner` options reload a loaded model when they change (`server/sched.go`,
  needsReload); `num_ctx` is at least 2048 for vision models (getRunner).
- The `Host` header (`server/routes.go`, allowedHostsMiddleware): a server on loopback answers
  403 with an empty body to a Host that is not local.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from batch.core.ollama_options import KNOWN_OPTIONS, RELOAD_OPTIONS, RETIRED_OPTIONS

CURRENT_VERSION = "0.30.0"  # the llama-server runner
GO_RUNNER_VERSION = "0.24.0"  # the last Go runners
TRUNCATE_FIELD_SINCE = (0, 12, 6)
LLAMA_SERVER_SINCE = (0, 30, 0)
DEFAULT_KEEP_ALIVE = "5m"
DEFAULT_NUM_KEEP = 4
VISION_MIN_CONTEXT = 2048
# Families Ollama runs with one slot whatever OLLAMA_NUM_PARALLEL says (server/sched.go, load).
ONE_SLOT_FAMILIES = frozenset(
    {"mllama", "qwen3vl", "qwen3vlmoe", "qwen35", "qwen35moe", "qwen3next", "lfm2", "lfm2moe"}
)
NO_SHIFT_ERROR = (
    "the prompt is longer than the context length currently available to the model; shorten "
    "the prompt, adjust the context length in settings, or use a model with a longer context "
    "length"
)
GO_RUNNER_TOO_LONG = "the input length exceeds the context length"
THINK_LEVELS = frozenset({"low", "medium", "high", "max"})


def version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.lstrip("v").split("-")[0].split("."):
        parts.append(int(piece) if piece.isdigit() else 0)
    return tuple(parts)


@dataclass(frozen=True)
class ServerVersion:
    text: str

    @property
    def honours_truncate(self) -> bool:
        return version_tuple(self.text) >= TRUNCATE_FIELD_SINCE

    @property
    def llama_server(self) -> bool:
        return version_tuple(self.text) >= LLAMA_SERVER_SINCE

    def too_long(self, tokens: int, num_ctx: int) -> str:
        """The 400 this server answers for an over-long prompt under `truncate: false`."""
        if self.llama_server:
            return (
                f"request ({tokens} tokens) exceeds the available context size "
                f"({num_ctx} tokens), try increasing it"
            )
        return GO_RUNNER_TOO_LONG

    def cut_to(self, num_ctx: int, num_keep: int) -> int:
        """How many prompt tokens are left of a prompt cut to fit `num_ctx`."""
        if not self.llama_server:
            return num_ctx
        num_keep = max(0, min(num_keep, num_ctx - 1))
        return num_ctx - max((num_ctx - num_keep) // 2, 1)


def option_error(
    options: Mapping[str, Any], version: ServerVersion
) -> tuple[str | None, list[str]]:
    """FromMap's error for a wrong type (a 500), and the names this server drops unread."""
    dropped: list[str] = []
    for name, value in options.items():
        kind = KNOWN_OPTIONS.get(name)
        if kind is None and not version.llama_server:
            kind = RETIRED_OPTIONS.get(name)
        if kind is None:
            dropped.append(name)
            continue
        if value is None:
            continue
        ok = {
            "integer": isinstance(value, int | float) and not isinstance(value, bool),
            "float32": isinstance(value, int | float) and not isinstance(value, bool),
            "boolean": isinstance(value, bool),
            "string": isinstance(value, str),
            "array": isinstance(value, list),
        }[kind]
        if not ok:
            return f'option "{name}" must be of type {kind}', dropped
        if kind == "array" and not all(isinstance(v, str) for v in value):
            return f'option "{name}" must be of an array of strings', dropped
    return None, dropped


_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def keep_alive_seconds(value: Any) -> float:
    """Ollama's keep_alive in seconds: a number, or a Go duration; negative: forever."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    sign = -1.0 if text.startswith("-") else 1.0
    parts = _DURATION_PART.findall(text.lstrip("+-"))
    return sign * sum(float(n) * _UNITS[u] for n, u in parts)


def expires_at(keep_alive: Any, now: datetime | None = None) -> str:
    """`/api/ps`'s expires_at for a model kept alive this long from now (forever: far off)."""
    seconds = keep_alive_seconds(keep_alive)
    if seconds < 0:
        return "2318-01-01T00:00:00Z"
    moment = (now or datetime.now(UTC)) + timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def runner_options(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: options[k] for k in sorted(RELOAD_OPTIONS) if options.get(k) is not None}


def local_host(host_header: str) -> bool:
    """Whether allowedHostsMiddleware lets this `Host` through to a loopback server."""
    host = host_header.lower()
    if host.startswith("["):
        host = host[1 : host.find("]")]
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    if host in ("", "localhost") or host.endswith((".localhost", ".local", ".internal")):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_unspecified
