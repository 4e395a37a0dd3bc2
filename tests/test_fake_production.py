"""The fake Ollama server's production additions, through the real client: a proxy's credential
check, thinking models, load-only requests."""

from __future__ import annotations

import ollama
import pytest

from batch.testing import FakeOllama

USER = {"role": "user", "content": "hello there"}


async def test_required_headers_give_401_when_missing_and_403_when_wrong() -> None:
    with FakeOllama(models=["m"], require_headers={"Authorization": "Bearer t"}) as fake:
        for headers, status in (({}, 401), ({"Authorization": "Bearer x"}, 403)):
            client = ollama.AsyncClient(fake.url, headers=headers)
            with pytest.raises(ollama.ResponseError) as info:
                await client.chat(model="m", messages=[USER])
            await client.close()  # type: ignore[no-untyped-call]
            assert info.value.status_code == status
            assert "nginx" in info.value.error
        client = ollama.AsyncClient(fake.url, headers={"Authorization": "Bearer t"})
        assert (await client.chat(model="m", messages=[USER])).message.content
        await client.close()  # type: ignore[no-untyped-call]
        assert fake.refused == 2 and fake.request_count == 1


async def test_thinking_models_think_unless_told_not_to_and_others_refuse_think() -> None:
    with FakeOllama(models=["plain"], thinking_models=["reasoner"]) as fake:
        client = ollama.AsyncClient(fake.url)
        thought = await client.chat(model="reasoner", messages=[USER])
        quiet = await client.chat(model="reasoner", messages=[USER], think=False)
        shown = await client.show("reasoner")
        with pytest.raises(ollama.ResponseError) as info:
            await client.chat(model="plain", messages=[USER], think=True)
        assert (await client.chat(model="plain", messages=[USER], think=False)).message.content
        await client.close()  # type: ignore[no-untyped-call]
    assert thought.message.thinking and not quiet.message.thinking
    assert (thought.eval_count or 0) > (quiet.eval_count or 0)
    assert shown.capabilities == ["completion", "thinking"]
    assert (info.value.status_code, info.value.error) == (400, '"plain" does not support thinking')


async def test_load_only_requests_are_counted_apart() -> None:
    with FakeOllama(models=["m"]) as fake:
        client = ollama.AsyncClient(fake.url)
        loaded = await client.chat(model="m", messages=[])
        await client.generate(model="m")
        await client.close()  # type: ignore[no-untyped-call]
        assert loaded.done_reason == "load"
        assert (fake.load_requests, fake.request_count) == (2, 0)
