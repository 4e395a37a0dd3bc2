"""Test doubles for the worker: a fake Ollama server that injects faults on demand."""

from batch.testing.fake_ollama import FAULT_KINDS, FakeOllama, Fault, FaultKind, count_tokens

__all__ = ["FAULT_KINDS", "FakeOllama", "Fault", "FaultKind", "count_tokens"]
