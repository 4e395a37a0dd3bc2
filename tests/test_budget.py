"""Budgets and how their settings parse; the run's stops are in tests/test_auto.py."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from batch.core.chat import Usage
from batch.core.errors import ConfigError
from batch.labelling.budget import Budget, BudgetReached, Budgets, parse_deadline
from batch.run.config import load_config
from batch.serving.hosts import parse_host


def test_a_deadline_is_a_duration_from_now_or_an_iso_time() -> None:
    assert parse_deadline("50m", now=1000.0) == 1000.0 + 3000
    assert parse_deadline("1h30m", now=0.0) == 5400
    assert parse_deadline("90s", now=0.0) == 90
    noon = datetime(2026, 12, 1, 12, tzinfo=UTC).timestamp()
    assert parse_deadline("2026-12-01T12:00:00Z", now=noon - 1) == noon
    assert parse_deadline("2026-12-01T12:00:00", now=noon - 1) == noon  # no zone: UTC
    assert parse_deadline("2026-12-01T13:00:00+01:00", now=noon - 1) == noon
    with pytest.raises(ValueError, match="50m"):
        parse_deadline("soon")


def test_a_deadline_already_past_is_refused_naming_it_and_now() -> None:
    noon = datetime(2026, 12, 1, 12, tzinfo=UTC).timestamp()
    said = r"2026-12-01T12:00:00Z is already past \(it is now 2026-12-01T12:00:00Z\)"
    with pytest.raises(ValueError, match=said):
        parse_deadline("2026-12-01T13:00:00+01:00", now=noon)
    with pytest.raises(ValueError, match="more than 0s"):
        parse_deadline("0s", now=noon)


def test_budget_settings_come_from_flags_environment_and_job_file(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("")
    config = load_config(
        {"input": source, "concurrency": "auto"},
        environ={"BATCH_MAX_TOKENS": "1000", "BATCH_DEADLINE": "10m"},
    )
    assert config.serving.concurrency == "auto" and config.budgets.max_tokens == 1000
    assert config.budgets.deadline is not None
    with pytest.raises(ConfigError, match="--max-requests"):
        load_config({"input": source, "max_requests": 0}, environ={})
    with pytest.raises(ConfigError, match="--concurrency"):
        load_config({"input": source}, environ={"BATCH_CONCURRENCY": "lots"})


def test_a_host_takes_auto_or_a_count() -> None:
    assert parse_host("http://gpu:11434#auto").auto
    assert parse_host("http://gpu:11434#8").concurrency == 8
    with pytest.raises(ValueError, match="URL#auto"):
        parse_host("http://gpu:11434#many")


def test_no_row_starts_that_the_latencies_seen_say_ends_after_the_deadline() -> None:
    now = [0.0]
    budget = Budget(Budgets(deadline=100.0), clock=lambda: now[0])
    assert budget.row_may_start()  # nothing seen yet: no reason to wait
    budget.row_ended(30.0, Usage())
    now[0] = 60.0
    assert budget.row_may_start()  # 60 + 30 < 100
    now[0] = 75.0
    assert not budget.row_may_start() and budget.met == "deadline"


def test_tokens_and_requests_gate_rows_and_requests() -> None:
    budget = Budget(Budgets(max_tokens=100, max_requests=3))
    assert budget.row_may_start()
    budget.sending()
    budget.replied(0.1, Usage(1, 30, 10))
    budget.row_ended(0.1, Usage(1, 30, 10))
    assert budget.row_may_start()  # 40 spent, one more row of 40 fits
    budget.sending()
    budget.replied(0.1, Usage(1, 30, 10))
    budget.row_ended(0.1, Usage(1, 30, 10))
    assert not budget.row_may_start()  # 80 spent: another 40 would go over
    assert budget.met == "max_tokens"
    budget.sending()  # a retry of a row under way may still go, as long as some are left
    with pytest.raises(BudgetReached):
        budget.sending()  # the requests are spent
    assert budget.left() == {"tokens": 20, "requests": 0}
