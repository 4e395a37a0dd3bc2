"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from batch.testing import FakeOllama


@pytest.fixture
def fake_ollama() -> Iterator[FakeOllama]:
    """A fresh fake Ollama server per test, serving `fake-model` from a background thread."""
    with FakeOllama() as fake:
        yield fake
