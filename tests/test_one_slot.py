"""A model family Ollama runs with one slot starts an auto limit at one: the Ollama backend
reads the family from /api/show, and the pool tells the host's limit after its first reply."""

from __future__ import annotations

from dataclasses import dataclass

from batch.core.chat import ChatRequest
from batch.serving.limits import AdaptiveLimit, FixedLimit
from batch.serving.ollama import OllamaBackend
from batch.serving.pool import HostPool
from batch.testing import FakeOllama, FunctionBackend, completion

REQUEST = ChatRequest("v", [{"role": "user", "content": "hi"}])


@dataclass
class FamilyBackend(FunctionBackend):
    family: str = "llama"

    def model_family(self, model: str) -> str | None:
        return self.family


async def test_the_pool_starts_a_one_slot_familys_auto_limit_at_one() -> None:
    for family, start in (("qwen3vl", 1), ("llama", 4)):
        limit = AdaptiveLimit()
        pool = HostPool(
            [FamilyBackend(lambda _: completion("{}"), family=family)], 64, limits=[limit]
        )
        await pool.chat(REQUEST)  # the first reply: the backend knows the family from here
        assert limit.current >= 4 if start == 4 else limit.current == 1


async def test_a_fixed_limit_stays_what_the_user_set() -> None:
    limit = FixedLimit(3)
    pool = HostPool([FamilyBackend(lambda _: completion("{}"), family="mllama")], 3, limits=[limit])
    await pool.chat(REQUEST)
    assert limit.current == 3


async def test_the_ollama_backend_knows_the_family_once_it_asked() -> None:
    with FakeOllama(models=["v"], vision_models=["v"]) as fake:
        backend = OllamaBackend(fake.url, concurrency=1, timeout=10)
        try:
            assert backend.model_family("v") is None
            await backend.chat(REQUEST)
            assert backend.model_family("v") == "qwen3vl"
        finally:
            await backend.aclose()
