"""`--ordered`: input order out of random completion order, in a bounded window, across reruns."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import batch.core.window
from batch import FatalRunError, JobConfig, run_job
from batch.core.chat import ChatRequest, Completion
from batch.core.errors import Rejected
from batch.core.window import ReorderWindow
from batch.sink.reorder import sort_by_line
from batch.testing import completion


@dataclass
class Shuffled:
    """Holds every request until `release_randomly` lets one go, so rows finish in an order
    the test picks at random; `fail` answers some prompts with an exception instead."""

    fail: Mapping[str, Exception] = field(default_factory=dict)
    name: str = "seam://shuffled"
    waiting: dict[str, anyio.Event] = field(default_factory=dict)
    released: list[str] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0

    async def chat(self, request: ChatRequest) -> Completion:
        prompt = request.messages[-1]["content"]
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self.waiting[prompt] = anyio.Event()
            await self.waiting[prompt].wait()
        finally:
            self.in_flight -= 1
        if prompt in self.fail:
            raise self.fail[prompt]
        return completion(json.dumps({"echo": prompt}))

    async def aclose(self) -> None:
        pass

    async def release_randomly(self, total: int, seed: int, fill: int | None = None) -> None:
        """Release `total` requests one at a time, each picked at random among those waiting
        once `fill` are (or, without `fill`, once every task is blocked: slower, but it shows
        how many requests the run lets in at once)."""
        rng = random.Random(seed)
        while len(self.released) < total:
            if fill is None:
                await anyio.wait_all_tasks_blocked()
            elif len(self.waiting) < min(fill, total - len(self.released)):
                await anyio.lowlevel.checkpoint()
                continue
            if self.waiting:
                prompt = rng.choice(sorted(self.waiting))
                self.released.append(prompt)
                self.waiting.pop(prompt).set()


def config(tmp_path: Path, n: int, **settings: Any) -> JobConfig:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": i, "prompt": f"row {i}"}) + "\n" for i in range(n)))
    return JobConfig(input=path, model="m", backoff=0, ordered=True, **settings)


def ids(path: Path) -> list[Any]:
    return [_native(json.loads(line))["id"] for line in path.read_text().splitlines()]


def _native(record: dict[str, Any]) -> dict[str, Any]:
    return record.get("batch", record)  # type: ignore[no-any-return]


async def run_shuffled(
    cfg: JobConfig, backend: Shuffled, total: int, seed: int, *, fill: int | None = None
) -> None:
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(backend.release_randomly, total, seed, fill)
            await run_job(cfg, backends=[backend])


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_rows_come_out_in_input_order(tmp_path: Path, seed: int) -> None:
    cfg = config(tmp_path, 40, concurrency=4)
    backend = Shuffled()
    await run_shuffled(cfg, backend, 40, seed, fill=4)
    assert backend.released != sorted(backend.released, key=lambda p: int(p.split()[1]))
    assert ids(cfg.output_path) == list(range(40))


async def test_the_window_bounds_how_far_rows_run_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch.core.window, "WINDOW", 2)
    cfg = config(tmp_path, 8, concurrency=4)
    backend = Shuffled()
    await run_shuffled(cfg, backend, 8, seed=5)
    assert backend.max_in_flight == 2  # slots were free; the window held rows back
    assert ids(cfg.output_path) == list(range(8))


async def test_a_rerun_keeps_the_file_in_input_order(tmp_path: Path) -> None:
    cfg = config(tmp_path, 12, concurrency=3, output_format="openai")
    rejected = {f"row {i}": Rejected("HTTP 400: no", status_code=400) for i in (0, 5, 11)}
    await run_shuffled(cfg, Shuffled(fail=rejected), 12, seed=7, fill=3)
    assert ids(cfg.output_path) == list(range(12))

    await run_shuffled(cfg, Shuffled(), 3, seed=8, fill=3)
    lines = [json.loads(line) for line in cfg.output_path.read_text().splitlines()]
    assert [int(r["custom_id"]) for r in lines] == list(range(12))
    assert all(r["error"] is None for r in lines)


async def test_a_stopped_run_keeps_rows_finished_after_a_gap(tmp_path: Path) -> None:
    """Row 2 never finishes and row 5 stops the run: rows 3 and 4, finished but held back
    behind row 2, are still written; the rerun fills the gaps and sorts the file."""
    cfg = config(tmp_path, 10, concurrency=4)
    four_done = anyio.Event()

    class Stopping(Shuffled):
        async def chat(self, request: ChatRequest) -> Completion:
            prompt = request.messages[-1]["content"]
            if prompt == "row 2":
                await anyio.sleep_forever()
            if prompt == "row 5":
                await four_done.wait()
                await anyio.wait_all_tasks_blocked()
                raise FatalRunError("the model went away")
            if prompt == "row 4":
                four_done.set()
            return completion(json.dumps({"echo": prompt}))

    with anyio.fail_after(20), pytest.raises(FatalRunError):
        await run_job(cfg, backends=[Stopping()])
    first = ids(cfg.output_path)
    assert {0, 1, 3, 4} <= set(first) and not {2, 5} & set(first)
    assert first == sorted(first)

    await run_shuffled(cfg, Shuffled(), 10 - len(first), seed=9, fill=4)
    assert ids(cfg.output_path) == list(range(10))


async def test_the_window_admits_only_what_it_can_hold() -> None:
    window = ReorderWindow[bytes](3)
    for seq in range(3):
        await window.admit(seq)
    assert not window.has_room(3)
    admitted = anyio.Event()

    async def admit_fourth() -> None:
        await window.admit(3)
        admitted.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(admit_fourth)
        assert window.put(2, b"c\n") == []
        assert window.put(1, b"b\n") == []
        await anyio.wait_all_tasks_blocked()
        assert not admitted.is_set()
        assert window.put(0, b"a\n") == [b"a\n", b"b\n", b"c\n"]
    assert admitted.is_set()
    assert window.put(4, b"e\n") == []
    assert window.rest() == [b"e\n"]


def test_sort_merges_the_runs_of_reruns(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    runs = [[1, 4, 9], [2, 3, 10], [5, 6, 7, 8]]
    path.write_text("".join(json.dumps({"id": n, "line": n}) + "\n" for run in runs for n in run))
    assert sort_by_line(path)
    assert [json.loads(x)["line"] for x in path.read_text().splitlines()] == list(range(1, 11))
    assert not sort_by_line(path)
    assert not path.with_name("out.jsonl.sort-tmp").exists()
