"""The adaptive limit, driven on a simulated clock by a server with S slots and a FIFO queue
(tests/limit_sim.py): no wall time, so the bounds hold on any machine."""

from __future__ import annotations

import pytest

from batch.serving.limits import AdaptiveLimit, FixedLimit
from tests.limit_sim import Server, Simulation


def simulate(slots: int, service: float, seconds: float, **server: float | bool) -> Simulation:
    sim = Simulation(Server(slots, service, **server))  # type: ignore[arg-type]
    sim.make_limit()
    sim.run(seconds)
    return sim


@pytest.mark.parametrize("slots", [1, 4, 8, 16])
@pytest.mark.parametrize("service", [0.05, 0.5])
@pytest.mark.parametrize("timings", [False, True], ids=["reply-times", "server-timings"])
def test_it_grows_to_keep_every_slot_busy_with_a_short_queue(
    slots: int, service: float, timings: bool
) -> None:
    sim = simulate(slots, service, 60.0, timings=timings)
    assert sim.replies >= 0.93 * slots / service * 60.0
    assert sim.queue_area / 60.0 <= 2.2  # requests waiting at the server, time-averaged
    assert sim.limit is not None and sim.limit.settled is not None
    assert slots <= sim.limit.settled <= slots * 1.5 + 4


def share_below(sim: Simulation, since: float, value: int) -> float:
    """The share of the time since `since` that the limit was below `value` (the base is
    re-measured now and then, one round below the slots)."""
    below, last, previous = 0.0, since, sim.limit_at(since)
    for when, current in [(w, c) for w, c in sim.limits if w > since] + [(sim.now, 0)]:
        below += (when - last) * (previous < value)
        last, previous = when, current
    return below / (sim.now - since)


def test_it_starts_by_doubling_and_settles() -> None:
    assert AdaptiveLimit().current == 4
    sim = simulate(16, 0.1, 60.0, transit=0.001)
    assert max(current for when, current in sim.limits if when < 2.0) >= 16  # doubled past S
    late = [current for when, current in sim.limits if when > 30.0]
    assert max(late) <= 20  # settled, with a little to spare
    assert share_below(sim, 30.0, 16) < 0.05


def test_a_server_that_slows_down_keeps_its_slots_busy() -> None:
    """Another client arrives, or the GPU gets busier: every reply takes twice as long. That
    looks like a queue at first; the base is measured again and the limit comes back."""
    sim = simulate(8, 0.1, 40.0)
    before = sim.limit_at(40.0)
    sim.server.service = 0.2
    replies = sim.replies
    sim.run(100.0)
    assert sim.replies - replies >= 0.9 * 8 / 0.2 * 60.0
    after = [current for when, current in sim.limits if when > 70.0]
    assert max(after) <= before + 3
    assert share_below(sim, 70.0, 8) < 0.05


def test_a_server_that_gets_faster_gets_more_replies() -> None:
    sim = simulate(8, 0.2, 40.0)
    sim.server.service = 0.1
    replies = sim.replies
    sim.run(80.0)
    assert sim.replies - replies >= 0.9 * 8 / 0.1 * 40.0


def test_a_full_queue_at_the_server_halves_the_limit_and_no_more_are_refused() -> None:
    # 503 past S+2 waiting: the doubling start overshoots once, then the limit stays below.
    sim = simulate(8, 0.1, 60.0, max_queue=10)
    assert sim.rejected <= 20
    assert sim.replies >= 0.93 * 80 * 60.0
    rejected = sim.rejected
    sim.run(120.0)
    assert sim.rejected == rejected


def test_overload_halves_once_for_the_requests_already_in_flight() -> None:
    now = [0.0]
    limit = AdaptiveLimit(64, initial=16, clock=lambda: now[0])
    now[0] = 1.0
    for _ in range(10):  # ten 503s for requests sent before the first one came back
        limit.overloaded(sent_at=0.5)
    assert limit.current == 8
    now[0] = 2.0
    limit.overloaded(sent_at=1.5)  # sent after the cut: the halved limit was still too much
    assert limit.current == 4
    assert limit.report()["overloads"] == 11


def test_overload_never_goes_below_one_nor_growth_above_the_ceiling() -> None:
    limit = AdaptiveLimit(64, initial=1, clock=lambda: 0.0)
    limit.overloaded(sent_at=0.0)
    assert limit.current == 1
    assert not limit.backs_off  # at one request, a 503 is the host's health's to judge
    sim = Simulation(Server(32, 0.1))
    capped = sim.make_limit(ceiling=6)
    sim.run(20.0)
    assert capped.current == 6


def test_a_host_back_from_a_failure_grows_again() -> None:
    sim = simulate(8, 0.1, 30.0)
    assert sim.limit is not None
    sim.limit.restart()
    assert sim.limit.current <= 6
    sim.run(60.0)
    assert sim.limit.current >= 8


def test_a_fixed_limit_stays_put() -> None:
    limit = FixedLimit(6)
    limit.replied(5.0, 6)
    limit.overloaded(0.0)
    assert limit.current == limit.ceiling == 6
    assert limit.report() == {"concurrency": 6, "concurrency_mode": "fixed"}


def test_a_model_family_ollama_runs_with_one_slot_starts_at_one() -> None:
    sim = Simulation(Server(1, 0.2))
    limit = sim.make_limit()
    limit.serves_family("mllama")
    assert limit.current == 1
    sim.run(30.0)
    assert limit.current <= 3 and sim.queue_area / 30.0 <= 2.0
    other = AdaptiveLimit()
    other.serves_family("llama")
    assert other.current == 4


def test_with_the_servers_timings_a_slow_client_is_not_a_queue() -> None:
    """A busy client adds its own delay to every reply: by reply times alone that reads as a
    queue; the server's timings say nobody waited, so the limit still fills the slots."""
    sim = simulate(8, 0.05, 30.0, timings=True, client_delay=0.05)
    assert sim.replies >= 0.93 * 160 * 30.0
    assert sim.queue_area / 30.0 <= 2.0
