"""`--concurrency auto`, budgets and `plan`, end to end: the CLI and the real `ollama` client
against the fake Ollama server. Bounds on the limit are generous: the machine's speed must not
decide a test (tests/test_limits.py holds the tight ones, on a simulated clock)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batch.cli import main
from batch.testing import FakeOllama, Fault
from tests.conftest import output_by_id, read_jsonl, run_cli, summary_of, write_rows

SCHEMA = {"type": "object", "properties": {"label": {"enum": ["a", "b"]}}, "required": ["label"]}


@pytest.fixture
def rows(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    yield tmp_path / "in.jsonl"


def host_report(path: Path) -> dict[str, Any]:
    by_host: dict[str, Any] = summary_of(path)["by_host"]
    return next(iter(by_host.values()))


def test_auto_grows_past_its_start_and_settles_near_the_slots(rows: Path) -> None:
    with FakeOllama(models=["m"], slots=8, latency=0.15) as fake:
        assert run_cli(write_rows(rows, 200), fake.url) == 0
        assert fake.max_in_flight >= 8  # started at 4, grew to fill the 8 slots
        assert fake.max_in_flight <= 32  # and did not run away to the ceiling (64)
    host = host_report(rows)
    assert host["concurrency_mode"] == "auto" and host["max_concurrency"] == 64
    assert host["settled_concurrency"] is not None
    assert 4 <= host["settled_concurrency"] <= 24
    assert len(output_by_id(rows)) == 200


def test_a_fixed_concurrency_is_kept(rows: Path) -> None:
    with FakeOllama(models=["m"], slots=8) as fake:
        assert run_cli(write_rows(rows, 60), f"{fake.url}#3") == 0
        assert fake.max_in_flight <= 3
    assert host_report(rows)["concurrency_mode"] == "fixed"


def test_a_full_server_queue_halves_the_limit_and_no_row_fails(rows: Path) -> None:
    # 503 "server busy" past one request waiting on 2 slots: the start at 4 is already too much.
    with FakeOllama(models=["m"], slots=2, latency=0.05, max_queue=1) as fake:
        assert run_cli(write_rows(rows, 120), fake.url, "--max-attempts", "8") == 0
        assert fake.busy_replies >= 1
    host = host_report(rows)
    assert host["overloads"] >= 1
    assert host["taken_out"] == 0  # a busy server is backed off from, not taken out
    assert len(output_by_id(rows)) == 120


def test_429_halves_the_limit(rows: Path) -> None:
    with FakeOllama(models=["m"], slots=4, latency=0.05) as fake:
        fake.add_fault(Fault("rate_limit", times=3))
        assert run_cli(write_rows(rows, 60), fake.url) == 0
    assert host_report(rows)["overloads"] == 3
    assert summary_of(rows)["retries"]["by_cause"] == {"http_429": 3}


def test_a_host_whose_speed_halves_mid_run_keeps_its_rows_going(rows: Path) -> None:
    with FakeOllama(models=["m"], slots=4, latency=0.05) as fake:

        def slow_down() -> None:
            fake.wait_for_requests(100, timeout=120)
            fake.latency = 0.1

        changer = threading.Thread(target=slow_down, daemon=True)
        changer.start()
        assert run_cli(write_rows(rows, 300), fake.url) == 0
        changer.join()
        assert fake.latency == 0.1
        assert fake.max_in_flight <= 24
    host = host_report(rows)
    assert host["concurrency"] >= 2  # not backed off to nothing by the slower replies
    assert len(output_by_id(rows)) == 300


def test_a_deadline_stops_with_exit_3_and_the_next_run_finishes(rows: Path) -> None:
    # 4 slots at 0.2 s: 20 rows/s at best, so 100 rows cannot end within 1.5 s.
    with FakeOllama(models=["m"], slots=4, latency=0.2) as fake:
        assert run_cli(write_rows(rows, 100), fake.url, "--deadline", "1.5s") == 3
        summary = summary_of(rows)
        assert summary["stopped_by"] == "deadline" and not summary["complete"]
        done = len(read_jsonl(rows.with_name("in.out.jsonl")))
        assert 0 < done < 100
        assert summary["left"]["rows"] == 100 - done
        assert run_cli(rows, fake.url) == 0
    assert sorted(output_by_id(rows)) == list(range(100))  # every row, once


def test_a_token_budget_stops_with_exit_3_and_the_next_run_finishes(rows: Path) -> None:
    with FakeOllama(models=["m"], slots=4) as fake:
        assert run_cli(write_rows(rows, 200), fake.url, "--max-tokens", "60") == 3
        summary = summary_of(rows)
        assert summary["stopped_by"] == "max_tokens"
        spent = summary["usage"]["input_tokens"] + summary["usage"]["output_tokens"]
        # Over by no more than the requests in flight when it was met (a few tokens each).
        assert spent <= 60 + 8 * 64
        assert 0 < summary["rows"]["ok"] < 200
        assert summary["left"]["rows"] == 200 - summary["rows"]["ok"]
        assert run_cli(rows, fake.url) == 0
    assert sorted(output_by_id(rows)) == list(range(200))


def test_a_request_budget_is_not_exceeded_by_more_than_the_requests_in_flight(
    rows: Path,
) -> None:
    with FakeOllama(models=["m"], slots=4) as fake:
        assert run_cli(write_rows(rows, 100), fake.url, "-c", "4", "--max-requests", "10") == 3
        assert fake.request_count <= 10
        summary = summary_of(rows)
        assert summary["stopped_by"] == "max_requests"
        assert summary["left"]["requests"] == 10 - fake.request_count
        assert run_cli(rows, fake.url) == 0
    assert sorted(output_by_id(rows)) == list(range(100))


BAD_LINES = [
    json.dumps({"id": "a", "prompt": "first"}),
    "{not json",
    json.dumps({"id": "b"}),
    json.dumps({"id": "a", "prompt": "again"}),
    json.dumps({"id": "c", "prompt": "one two three four five six seven eight"}),
]


def test_plan_reports_bad_lines_as_run_would_and_sends_nothing(
    rows: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows.write_text("".join(line + "\n" for line in BAD_LINES))
    plan_file = rows.with_name("plan.json")
    with FakeOllama(models=["m"]) as fake:
        argv = ["plan", str(rows), "--model", "m", "--host", fake.url, "--json", str(plan_file)]
        assert main([*argv, "--schema", str(rows.with_name("schema.json"))]) == 1
        assert fake.request_count == 0
        assert not rows.with_name("in.out.jsonl").exists()
        plan = json.loads(plan_file.read_text())
        assert plan["rows_to_label"] == 2 and plan["rows_done"] == 0
        assert [bad["line"] for bad in plan["bad_lines"]] == [2, 3]
        assert [(d["line"], d["id"]) for d in plan["duplicate_ids"]] == [(4, "a")]
        assert plan["estimated_input_tokens"] == 2 + 10  # 4 characters a token, rounded up
        assert "2 rows to label" in capsys.readouterr().out
        # The same reasons as a run writes.
        assert run_cli(rows, fake.url) == 1
    written = {
        r["line"]: r["error"]["message"]
        for r in read_jsonl(rows.with_name("in.out.jsonl"))
        if r["status"] == "error"
    }
    planned = {e["line"]: e["message"] for e in plan["bad_lines"] + plan["duplicate_ids"]}
    assert written == planned


def test_plan_calls_a_repeat_of_a_done_id_a_duplicate(rows: Path) -> None:
    write_rows(rows, ["a", "b"])
    plan_file = rows.with_name("plan.json")
    with FakeOllama(models=["m"]) as fake:
        assert run_cli(rows, fake.url) == 0
        write_rows(rows, ["a", "b", "a"])  # line 3 repeats a row done before
        argv = ["plan", str(rows), "--model", "m", "--host", fake.url, "--json", str(plan_file)]
        assert main([*argv, "--schema", str(rows.with_name("schema.json"))]) == 1
    plan = json.loads(plan_file.read_text())
    assert [(d["line"], d["id"]) for d in plan["duplicate_ids"]] == [(3, "a")]
    assert (plan["bad_lines"], plan["rows_done"], plan["rows_to_label"]) == ([], 2, 0)


def test_plan_counts_rows_done_and_a_sample_projects_the_rest(rows: Path) -> None:
    write_rows(rows, 50)
    plan_file = rows.with_name("plan.json")
    with FakeOllama(models=["m"], slots=4, latency=0.01) as fake:
        assert run_cli(rows, fake.url, "--max-requests", "10") == 3
        argv = ["plan", str(rows), "--model", "m", "--host", fake.url, "-q"]
        argv += ["--schema", str(rows.with_name("schema.json")), "--json", str(plan_file)]
        assert main([*argv, "--sample", "5"]) == 0
    plan = json.loads(plan_file.read_text())
    assert plan["rows_done"] + plan["rows_to_label"] == 50
    sample = plan["sample"]
    assert sample["rows_labelled"] == 5 and sample["rows_left"] == plan["rows_to_label"] - 5
    assert sample["projected_tokens"] > 0 and sample["projected_seconds"] is not None
    assert len(output_by_id(rows)) == 50 - sample["rows_left"]


def plan_sample(rows: Path, host: str, *extra: str) -> tuple[int, dict[str, Any]]:
    """`batch plan` on `rows` with `extra` flags (`--sample N`): its exit code and its JSON."""
    plan_file = rows.with_name("plan.json")
    argv = ["plan", str(rows), "--model", "m", "--host", host, "--json", str(plan_file)]
    code = main([*argv, "--schema", str(rows.with_name("schema.json")), *extra])
    return code, json.loads(plan_file.read_text())


def test_a_sample_waits_for_its_rows_however_long_a_reply_takes(
    rows: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Each reply takes longer than the grace period (a cold model loading, at its scale): the
    # sample still waits for its rows, and projects from them.
    write_rows(rows, 20)
    with FakeOllama(models=["m"], slots=4, latency=0.5) as fake:
        code, plan = plan_sample(rows, fake.url, "--grace-period", "0.05", "--sample", "2")
        assert code == 0 and fake.request_count == 2
    sample = plan["sample"]
    assert sample["rows_labelled"] == sample["rows_ok"] == 2
    assert sample["rows_left"] == 18 and sample["projected_rows_per_s"] > 0
    assert sample["projected_seconds"] is not None and sample["projected_tokens"] > 0
    assert len(output_by_id(rows)) == 2
    printed = capsys.readouterr()
    assert "2 of 2 rows ok" in printed.out
    assert "at most 2 rows in flight, the run may have" in printed.out  # a pace understated
    assert "max_rows" not in printed.err  # a name the user never typed


def test_a_sample_projects_the_rate_its_rows_were_labelled_at(rows: Path) -> None:
    # 2 slots at 0.2 s a reply: no run gets more than 10 rows/s out of this server, however
    # many requests it keeps in flight (the limit grows past the slots: they queue).
    write_rows(rows, 40)
    with FakeOllama(models=["m"], slots=2, latency=0.2) as fake:
        code, plan = plan_sample(rows, fake.url, "-q", "--sample", "10")
        assert code == 0
    sample = plan["sample"]
    assert sample["rows_labelled"] == 10
    assert 0 < sample["projected_rows_per_s"] <= 2 / 0.2
    # What it measured: the rows it finished over the time it took.
    assert sample["projected_rows_per_s"] == round(10 / sample["elapsed_s"], 2)


def test_a_sample_with_no_row_left_to_label_prints_no_none(
    rows: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_rows(rows, 3)
    with FakeOllama(models=["m"]) as fake:
        assert run_cli(rows, fake.url) == 0
        capsys.readouterr()
        code, plan = plan_sample(rows, fake.url, "-q", "--sample", "2")
        assert code == 0
    assert plan["sample"]["rows_labelled"] == 0 and plan["sample"]["rows_left"] == 0
    out = capsys.readouterr().out
    assert "sample:" in out and "None" not in out


def test_a_sample_of_no_rows_is_a_usage_error(
    rows: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["plan", str(write_rows(rows, 3)), "--model", "m", "--sample", "0"])
    assert exited.value.code == 2
    assert "--sample: '0' is not a number of rows (1 or more)" in capsys.readouterr().err


def test_rows_under_way_when_a_count_budget_is_met_are_written(rows: Path) -> None:
    # Their requests are paid for: cutting them at the grace period would pay for them twice.
    with FakeOllama(models=["m"], slots=4, latency=0.5) as fake:
        argv = ("-c", "4", "--grace-period", "0.05", "--max-requests", "3")
        assert run_cli(write_rows(rows, 20), fake.url, *argv) == 3
        sent = fake.request_count
    assert 1 <= sent <= 3
    assert len(output_by_id(rows)) == summary_of(rows)["rows"]["ok"] == sent


def test_a_budget_stop_counts_every_row_of_the_input_in_the_total(
    rows: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeOllama(models=["m"], slots=4) as fake:
        argv = ["run", str(write_rows(rows, 100)), "--model", "m", "--host", fake.url]
        argv += ["--schema", str(rows.with_name("schema.json")), "--max-requests", "10"]
        assert main(argv) == 3
    summary = summary_of(rows)
    assert summary["rows"]["total"] == 100
    assert summary["rows"]["ok"] + summary["left"]["rows"] == 100
    err = capsys.readouterr().err
    assert "of 100 rows" in err and "--max-requests 10" in err
    assert "max_requests" not in err  # the flag the user typed, not the setting's name


def test_a_deadline_already_past_is_a_usage_error_naming_the_time(
    rows: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeOllama(models=["m"]) as fake:
        assert run_cli(write_rows(rows, 5), fake.url, "--deadline", "2020-01-01T18:00Z") == 2
        assert fake.request_count == 0
    err = capsys.readouterr().err
    assert "--deadline" in err and "2020-01-01T18:00:00Z" in err
    assert "run again" not in err
    assert not rows.with_name("in.out.jsonl").exists()


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--deadline", "5", "'5': write the deadline as a duration"),
        ("--keep-alive", "soon", "is not a duration"),
        ("--template", "say {}", "must be named"),
        ("--option", "temperature=hot", "must be a number"),
    ],
)
def test_a_bad_flag_value_is_refused_without_the_library_prefix(
    rows: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, says: str
) -> None:
    assert main(["run", str(write_rows(rows, 1)), "--model", "m", flag, value]) == 2
    err = capsys.readouterr().err
    assert f"{flag} (from {flag}): " in err and says in err
    assert "Value error" not in err


def test_help_lists_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for code in ("0 every row ok", "1 some row failed", "2 usage", "3 stopped at a budget"):
        assert code in text
    assert "130 after SIGINT; 143 after SIGTERM" in text
