"""Test doubles for the worker: backends at the seam (`TestBackend`, `FunctionBackend`), and a
fake Ollama server that injects faults on demand (`FakeOllama`, which needs the `test` extra's
aiohttp: `pip install 'batch[test]'`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from batch.testing.seam import FunctionBackend, TestBackend, completion

if TYPE_CHECKING:
    from batch.testing.fake_ollama import FAULT_KINDS, FakeOllama, Fault, FaultKind, count_tokens

__all__ = [
    "FAULT_KINDS",
    "FakeOllama",
    "Fault",
    "FaultKind",
    "FunctionBackend",
    "TestBackend",
    "completion",
    "count_tokens",
]
_SERVER = frozenset({"FAULT_KINDS", "FakeOllama", "Fault", "FaultKind", "count_tokens"})


def __getattr__(name: str) -> Any:
    """The fake server loads on first use, so the seam doubles work without aiohttp."""
    if name in _SERVER:
        try:
            from batch.testing import fake_ollama
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError(
                f"batch.testing.{name} needs aiohttp: pip install 'batch[test]'"
            ) from exc
        return getattr(fake_ollama, name)
    raise AttributeError(f"module 'batch.testing' has no attribute {name!r}")
