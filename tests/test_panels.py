"""Panels of models through the real CLI against the fake server, whose models answer a gold
file with known accuracies (batch/testing/graded.py): every row asked of every member, the
votes, the consensus, its agreement and usage as the server saw them."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batch.cli import main
from batch.testing import FakeOllama
from batch.testing.graded import Graded
from tests.conftest import FAST_RETRIES, read_jsonl

SCHEMA = {
    "type": "object",
    "properties": {
        "topic": {"enum": ["sport", "weather", "food"]},
        "note": {"type": "string"},
    },
    "required": ["topic", "note"],
}
TOPICS = ("sport", "weather", "food")


def gold_rows(n: int) -> list[dict[str, Any]]:
    return [
        {"id": f"r{i}", "text": f"text number {i}", "topic": TOPICS[i % 3], "note": f"n{i}"}
        for i in range(n)
    ]


@pytest.fixture
def job(tmp_path: Path) -> Path:
    """12 rows that carry their gold labels, and the schema beside them."""
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in gold_rows(12)))
    return path


@pytest.fixture
def fake(job: Path) -> Any:
    with FakeOllama(models=("a", "b", "c", "d")) as server:
        server.responder = Graded.from_file(job, {"a": 1.0, "b": 0.75, "c": 0.5, "d": 0.25})
        yield server


def run(job: Path, fake: FakeOllama, *extra: str) -> int:
    argv = ["run", str(job), "--host", fake.url, "--schema", str(job.parent / "schema.json")]
    argv += ["--template", "{text}", "-q", *FAST_RETRIES, *extra]
    return main(argv)


def output(job: Path) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in read_jsonl(job.with_name("in.out.jsonl"))}


def summary(job: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(job.with_name("in.out.summary.json").read_text())
    return loaded


def asked(fake: FakeOllama) -> Counter[str]:
    return Counter(body["model"] for body in fake.requests)


def test_every_row_is_asked_of_every_member(job: Path, fake: FakeOllama) -> None:
    assert run(job, fake, "--panel", "a,b,c") == 0
    assert asked(fake) == {"a": 12, "b": 12, "c": 12}
    rows = output(job)
    for row in rows.values():
        assert [v["model"] for v in row["votes"]] == ["a", "b", "c"]
        assert all(v["status"] == "ok" and v["usage"]["requests"] == 1 for v in row["votes"])
        topics = [v["output"]["topic"] for v in row["votes"]]
        top, count = Counter(topics).most_common(1)[0]
        if count > 1:
            assert row["output"]["topic"] == top
        assert row["agreement"] == {"topic": round(topics.count(row["output"]["topic"]) / 3, 4)}
        assert row["usage"]["requests"] == 3
        assert row["model"] == "a,b,c"
        assert "sample" not in row["votes"][0]
    total = sum(r["usage"]["input_tokens"] + r["usage"]["output_tokens"] for r in rows.values())
    report = summary(job)
    assert report["usage"]["requests"] == len(fake.requests) == 36
    assert report["usage"]["input_tokens"] + report["usage"]["output_tokens"] == total
    panel = report["panel"]
    assert panel["rows"] == 12 and panel["vote"] == "majority"
    for name in "abc":
        member = panel["members"][name]
        votes = [r["votes"]["abc".index(name)] for r in rows.values()]
        assert member["requests"] == 12 == member["valid_votes"]
        assert member["input_tokens"] == sum(v["usage"]["input_tokens"] for v in votes)
        agreeing = sum(
            v["output"]["topic"] == r["output"]["topic"]
            for v, r in zip(votes, rows.values(), strict=True)
        )
        assert member["agreement"] == {"topic": round(agreeing / 12, 4)}
    assert panel["unanimous"] == sum(
        len({v["output"]["topic"] for v in r["votes"]}) == 1 for r in rows.values()
    )
    assert panel["kappa"]["topic"] == pytest.approx(fleiss([r["votes"] for r in rows.values()]))


def fleiss(rows: list[list[dict[str, Any]]]) -> float:
    """Fleiss' kappa of equal numbers of votes, by the textbook formula."""
    n = len(rows[0])
    counts = [Counter(v["output"]["topic"] for v in votes) for votes in rows]
    p_i = [(sum(c * c for c in row.values()) - n) / (n * (n - 1)) for row in counts]
    totals = Counter[str]()
    for row in counts:
        totals.update(row)
    p_e = sum((t / (n * len(rows))) ** 2 for t in totals.values())
    return round((sum(p_i) / len(rows) - p_e) / (1 - p_e), 4)


def test_a_tie_goes_to_the_earliest_member(job: Path, fake: FakeOllama) -> None:
    """`d` is wrong on 9 rows of 12: there the two disagree, and `a` (first) wins."""
    assert run(job, fake, "--panel", "a,d") == 0
    gold = {row["id"]: row["topic"] for row in gold_rows(12)}
    for key, row in output(job).items():
        a, d = (v["output"]["topic"] for v in row["votes"])
        assert row["output"]["topic"] == a == gold[key]
        assert row["agreement"]["topic"] == (1.0 if a == d else 0.5)
    assert (
        main(
            [
                "run",
                str(job),
                "--host",
                fake.url,
                "--panel",
                "d,a",
                "-q",
                "--overwrite",
                "--schema",
                str(job.parent / "schema.json"),
                "--template",
                "{text}",
            ]
        )
        == 0
    )
    assert {k: r["output"]["topic"] for k, r in output(job).items()} == {
        k: r["votes"][0]["output"]["topic"] for k, r in output(job).items()
    }


def test_samples_each_have_their_own_seed_the_same_on_a_rerun(job: Path, fake: FakeOllama) -> None:
    assert run(job, fake, "--model", "b", "--samples", "3") == 0
    seeds = Counter(body["options"]["seed"] for body in fake.requests)
    assert seeds == {1: 12, 2: 12, 3: 12}
    for row in output(job).values():
        assert [(v["model"], v["sample"]) for v in row["votes"]] == [("b", 1), ("b", 2), ("b", 3)]
    warnings = summary(job)["warnings"]
    assert any("--samples 3 at temperature 0" in w for w in warnings)
    first = output(job)
    assert run(job, fake, "--model", "b", "--samples", "3", "--overwrite") == 0
    assert Counter(body["options"]["seed"] for body in fake.requests[36:]) == seeds
    assert output(job).keys() == first.keys()
    assert all(output(job)[k]["votes"] == first[k]["votes"] for k in first)


def test_an_option_seed_is_where_the_samples_start(job: Path, fake: FakeOllama) -> None:
    assert (
        run(
            job,
            fake,
            "--model",
            "b",
            "--samples",
            "2",
            "--option",
            "seed=10",
            "--option",
            "temperature=0.7",
        )
        == 0
    )
    assert {body["options"]["seed"] for body in fake.requests} == {11, 12}
    assert summary(job)["warnings"] == []


def prose_from(graded: Callable[[dict[str, Any]], str] | None, model: str) -> Any:
    """The replies of `graded`, but `model` answers in prose (a vote that fails)."""
    assert graded is not None

    def respond(body: dict[str, Any]) -> str:
        return "I think it is sport." if body["model"] == model else graded(body)

    return respond


def test_a_failed_vote_does_not_fail_the_row_while_the_quorum_holds(
    job: Path, fake: FakeOllama
) -> None:
    fake.responder = prose_from(fake.responder, "c")
    assert run(job, fake, "--panel", "a,b,c", "--max-attempts", "1") == 0
    for row in output(job).values():
        assert row["status"] == "ok"
        assert row["votes"][2]["status"] == "error"
        assert row["votes"][2]["error"]["type"] == "validation"
        assert "output" not in row["votes"][2]
        # The agreement is over the valid votes.
        assert row["agreement"]["topic"] in (0.5, 1.0)
    assert summary(job)["panel"]["members"]["c"]["valid_votes"] == 0


def test_a_row_under_the_quorum_fails_with_every_vote(job: Path, fake: FakeOllama) -> None:
    fake.responder = prose_from(fake.responder, "c")
    code = run(job, fake, "--panel", "a,b,c", "--max-attempts", "1", "--quorum", "3")
    assert code == 1
    for row in output(job).values():
        assert row["status"] == "error"
        assert row["error"]["type"] == "quorum"
        assert "2 of 3 votes valid" in row["error"]["message"]
        assert [v["status"] for v in row["votes"]] == ["ok", "ok", "error"]
        assert row["usage"]["requests"] == 3
    assert summary(job)["errors_by_type"] == {"quorum": 12}


def test_escalate_asks_the_rest_only_where_the_first_two_disagree(
    job: Path, fake: FakeOllama
) -> None:
    assert run(job, fake, "--panel", "a,b,c,d", "--escalate") == 0
    rows = output(job)
    split = [k for k, r in rows.items() if r["votes"][0]["output"] != r["votes"][1]["output"]]
    assert 0 < len(split) < 12
    assert asked(fake) == {"a": 12, "b": 12, "c": len(split), "d": len(split)}
    for key, row in rows.items():
        assert len(row["votes"]) == (4 if key in split else 2)
    saved = summary(job)["panel"]["requests_saved"]["escalation"]
    assert saved == 2 * (12 - len(split))
    # A rerun needs nothing more: the first two settle the rows they agree on.
    assert run(job, fake, "--panel", "a,b,c,d", "--escalate") == 0
    assert len(fake.requests) == 24 + 2 * len(split)


def test_adding_a_member_later_asks_only_the_new_member(job: Path, fake: FakeOllama) -> None:
    assert run(job, fake, "--panel", "a,b") == 0
    before = output(job)
    assert run(job, fake, "--panel", "a,b,c") == 0
    assert asked(fake) == {"a": 12, "b": 12, "c": 12}  # 12 more: one a row, to c
    after = output(job)
    assert len(read_jsonl(job.with_name("in.out.jsonl"))) == 12
    for key, row in after.items():
        assert row["votes"][:2] == before[key]["votes"]
        assert row["votes"][2]["model"] == "c"
        assert row["usage"]["requests"] == 3
    report = summary(job)
    assert report["rows"]["changed"] == 0 and report["usage"]["requests"] == 12
    assert report["panel"]["members"]["a"]["requests"] == 0
    assert report["panel"]["members"]["c"]["requests"] == 12
    # A complete panel: nothing is sent, every row is already done.
    assert run(job, fake, "--panel", "a,b,c") == 0
    assert len(fake.requests) == 36
    assert summary(job)["rows"]["skipped"] == 12


def test_a_member_left_out_has_its_votes_dropped_and_the_row_re_voted(
    job: Path, fake: FakeOllama
) -> None:
    assert run(job, fake, "--panel", "a,c,d") == 0
    assert run(job, fake, "--panel", "c,d") == 0
    assert len(fake.requests) == 36  # nothing sent
    for row in output(job).values():
        assert [v["model"] for v in row["votes"]] == ["c", "d"]
        c, d = (v["output"]["topic"] for v in row["votes"])
        assert row["output"]["topic"] == c
        assert row["agreement"]["topic"] == (1.0 if c == d else 0.5)
    assert summary(job)["rows"]["changed"] == 0


def test_a_failed_vote_is_asked_again_on_a_rerun(job: Path, fake: FakeOllama) -> None:
    graded = fake.responder
    fake.responder = prose_from(graded, "c")
    assert run(job, fake, "--panel", "a,b,c", "--max-attempts", "1", "--quorum", "3") == 1
    fake.responder = graded
    assert run(job, fake, "--panel", "a,b,c", "--quorum", "3") == 0
    assert len(fake.requests) == 36 + 12  # only c, again
    assert all(r["status"] == "ok" for r in output(job).values())


def test_a_one_member_panel_resumes_at_a_glance(job: Path, fake: FakeOllama) -> None:
    assert run(job, fake, "--panel", "a") == 0
    assert run(job, fake, "--panel", "a") == 0
    assert len(fake.requests) == 12
    assert summary(job)["rows"]["skipped"] == 12


def test_identical_rows_send_each_members_request_once(job: Path, fake: FakeOllama) -> None:
    lines = job.read_text().splitlines()
    copies = [json.dumps({**json.loads(line), "id": f"copy-{i}"}) for i, line in enumerate(lines)]
    job.write_text("\n".join([*lines, *copies]) + "\n")
    assert run(job, fake, "--panel", "a,b") == 0
    assert asked(fake) == {"a": 12, "b": 12}
    rows = output(job)
    copy = rows["copy-3"]
    assert copy["votes"][0]["same_as"] == "r3" and copy["same_as"] == "r3"
    assert copy["usage"]["requests"] == 0
    assert copy["output"] == rows["r3"]["output"]


def test_the_cache_serves_each_member(job: Path, fake: FakeOllama) -> None:
    cache = str(job.with_name("labels.cache"))
    assert run(job, fake, "--panel", "a,b", "--cache", cache) == 0
    first = output(job)
    assert run(job, fake, "--panel", "a,b,c", "--cache", cache, "--overwrite") == 0
    assert asked(fake) == {"a": 12, "b": 12, "c": 12}
    for key, row in output(job).items():
        assert [v.get("cached", False) for v in row["votes"]] == [True, True, False]
        assert [v["output"] for v in row["votes"][:2]] == [v["output"] for v in first[key]["votes"]]


def test_openai_lines_keep_the_votes_and_resume(job: Path, fake: FakeOllama) -> None:
    assert run(job, fake, "--panel", "a,b", "--output-format", "openai") == 0
    assert run(job, fake, "--panel", "a,b,c", "--output-format", "openai") == 0
    assert asked(fake) == {"a": 12, "b": 12, "c": 12}
    for line in read_jsonl(job.with_name("in.out.jsonl")):
        native = line["batch"]
        assert [v["model"] for v in native["votes"]] == ["a", "b", "c"]
        content = line["response"]["body"]["choices"][0]["message"]["content"]
        assert json.loads(content) == native["output"]
        assert line["response"]["body"]["usage"]["total_tokens"] == (
            native["usage"]["input_tokens"] + native["usage"]["output_tokens"]
        )


def crowd_kit_posteriors(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    crowdkit = pytest.importorskip("crowdkit.aggregation")
    pd = pytest.importorskip("pandas")
    data = pd.DataFrame(
        [
            (key, vote["model"], vote["output"]["topic"])
            for key, row in rows.items()
            for vote in row["votes"]
            if vote["status"] == "ok"
        ],
        columns=["task", "worker", "label"],
    )
    probas = crowdkit.DawidSkene(n_iter=100, tol=1e-5).fit_predict_proba(data)
    return {key: {str(k): float(p) for k, p in probas.loc[key].items()} for key in rows}


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
def test_dawid_skene_re_votes_the_output_as_crowd_kit_would(job: Path, fake: FakeOllama) -> None:
    assert run(job, fake, "--panel", "a,b,c,d", "--vote", "dawid-skene") == 0
    rows = output(job)
    expected = crowd_kit_posteriors(rows)
    for key, row in rows.items():
        posterior = expected[key]
        top = max(posterior.values())
        best = [label for label, p in posterior.items() if p == top]
        if len(best) == 1:
            assert row["output"]["topic"] == best[0]
        assert row["confidence"]["topic"] == pytest.approx(top, abs=1e-3)
        share = sum(v["output"]["topic"] == row["output"]["topic"] for v in row["votes"]) / 4
        assert row["agreement"]["topic"] == share
    panel = summary(job)["panel"]
    assert panel["vote"] == "dawid-skene" and panel["rows"] == 12
    assert len(fake.requests) == 48


def test_aggregate_votes_again_from_the_recorded_votes(job: Path, fake: FakeOllama) -> None:
    assert run(job, fake, "--panel", "a,c,d") == 0
    out = job.with_name("in.out.jsonl")
    majority = out.read_text()
    new = job.with_name("ds.jsonl")
    assert main(["aggregate", str(out), "--vote", "dawid-skene", "-o", str(new)]) == 0
    assert out.read_text() == majority  # -o: the output itself is left alone
    by_ds = {row["id"]: row for row in read_jsonl(new)}
    assert all(r["votes"] == output(job)[k]["votes"] for k, r in by_ds.items())
    assert any(r["confidence"] != output(job)[k]["confidence"] for k, r in by_ds.items())
    # In place, by majority again: the lines the run wrote.
    assert main(["aggregate", str(new), "--vote", "majority"]) == 0
    assert read_jsonl(new) == read_jsonl(out)
    assert len(fake.requests) == 36  # no request


def test_aggregate_of_a_missing_file_is_an_error(tmp_path: Path) -> None:
    assert main(["aggregate", str(tmp_path / "none.jsonl")]) == 2


def test_review_below_sends_rows_whose_agreement_is_below(job: Path, fake: FakeOllama) -> None:
    assert run(job, fake, "--panel", "a,b,c", "--review-below", "0.9") == 0
    rows = output(job)
    low = {k for k, r in rows.items() if r["agreement"]["topic"] < 0.9}
    review = read_jsonl(job.with_name("in.out.review.jsonl"))
    assert low and {r["id"] for r in review} == low
    assert all(r["agreement"] == rows[r["id"]]["agreement"] for r in review)
    for row in rows.values():  # --review-below asks log-probabilities: each vote's confidence
        assert all("confidence" in v for v in row["votes"])


def test_a_job_file_names_the_panel(job: Path, fake: FakeOllama) -> None:
    job.with_suffix(".toml").write_text('panel = ["a", "b"]\nsamples = 2\n')
    assert run(job, fake, "--option", "temperature=0.5") == 0
    assert asked(fake) == {"a": 24, "b": 24}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--panel", "a,b", "--escalate"], "--escalate needs a --panel of three or more models"),
        (["--panel", "a,b", "--quorum", "3"], "--quorum 3 is more than the 2 answers a row gets"),
        (["--panel", "a,,b"], "name every member"),
        (["--panel", "a,b,a"], "a model is named twice"),
        (["--samples", "2"], "--samples needs --model (or --panel)"),
    ],
)
def test_a_panel_that_cannot_run_is_refused(
    job: Path, flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(job), "-q", *flags]) == 2
    error = capsys.readouterr().err
    assert message in error
    assert "Value error" not in error


def test_eval_measures_each_member_beside_the_panel(job: Path, fake: FakeOllama) -> None:
    assert run(job, fake, "--panel", "a,b,c") == 0
    out, report_path = job.with_name("in.out.jsonl"), job.with_name("eval.json")
    html = job.with_name("eval.html")
    argv = ["eval", str(out), "--gold", str(job), "--field", "topic"]
    assert main([*argv, "--report", str(report_path), "--html", str(html)]) == 0
    report = json.loads(report_path.read_text())
    members = report["members"]
    # The fake's known accuracies, each member on its own votes.
    assert [members[m]["fields"]["topic"]["accuracy"] for m in "abc"] == [1.0, 0.75, 0.5]
    rows = output(job)
    for index, name in enumerate("abc"):
        tokens = sum(
            r["votes"][index]["usage"]["input_tokens"] + r["votes"][index]["usage"]["output_tokens"]
            for r in rows.values()
        )
        correct = members[name]["fields"]["topic"]["correct"]
        assert members[name]["tokens"] == tokens
        assert members[name]["tokens_per_correct_label"] == round(tokens / correct, 1)
    panel_tokens = sum(
        r["usage"]["input_tokens"] + r["usage"]["output_tokens"] for r in rows.values()
    )
    assert report["panel"]["tokens"] == panel_tokens
    assert report["panel"]["correct_labels"] == report["fields"]["topic"]["correct"]
    assert report["panel"]["kappa"]["topic"] == summary(job)["panel"]["kappa"]["topic"]
    bands = report["fields"]["topic"]["agreement_bands"]
    assert sum(b["rows"] for b in bands) == 12
    unanimous = next(b for b in bands if b["to"] == 1.0)
    assert unanimous["rows"] == summary(job)["panel"]["unanimous"]
    page = html.read_text()
    assert "Panel and members" in page and "b, own votes" in page
    assert "Accuracy by the panel&#x27;s agreement" in page


def test_a_request_budget_counts_each_members_request(job: Path, fake: FakeOllama) -> None:
    assert run(job, fake, "--panel", "a,b,c", "--max-requests", "7", "-c", "1") == 3
    report = summary(job)
    assert report["stopped_by"] == "max_requests"
    assert len(fake.requests) <= 7 + 2  # the rows under way when it was met finish theirs
    assert report["usage"]["requests"] == 3 * report["rows"]["ok"]
    assert run(job, fake, "--panel", "a,b,c") == 0  # the next run labels the rest
    assert len(output(job)) == 12
    assert all(len(row["votes"]) == 3 for row in output(job).values())


def test_shards_of_a_panel_merge_into_every_row_once(job: Path, fake: FakeOllama) -> None:
    for shard in ("0/2", "1/2"):
        assert run(job, fake, "--panel", "a,b", "--shard", shard) == 0
    assert main(["merge", str(job)]) == 0
    assert asked(fake) == {"a": 12, "b": 12}
    assert all(len(row["votes"]) == 2 for row in output(job).values())
    assert len(output(job)) == 12


def test_dawid_skene_keeps_a_labels_type_when_no_vote_of_the_row_gave_it(tmp_path: Path) -> None:
    """String labels that read as JSON ("3") stay strings when the posterior picks a value that
    only other rows' votes gave."""

    def vote(model: str, rating: str | None) -> dict[str, Any]:
        usage = {"requests": 1, "input_tokens": 1, "output_tokens": 1}
        if rating is None:
            return {
                "model": model,
                "status": "error",
                "error": {"type": "validation"},
                "usage": usage,
            }
        return {"model": model, "status": "ok", "output": {"rating": rating}, "usage": usage}

    def line(i: int, ratings: list[str | None]) -> str:
        votes = [vote(m, r) for m, r in zip("ABCDE", ratings, strict=True)]
        record = {"id": i, "line": i + 1, "status": "ok", "output": {"rating": "2"}}
        record |= {"agreement": {"rating": 1.0}, "votes": votes}
        return json.dumps(record)

    # D and E say "2" whenever A, B and C say "3": their "2" reads as a "3".
    rows = [line(i, ["3", "3", "3", "2", "2"]) for i in range(50)]
    rows += [line(50 + i, ["2"] * 5) for i in range(10)]
    rows += [line(60 + i, ["1"] * 5) for i in range(20)]
    rows.append(line(80, [None, None, None, "2", "2"]))
    out = tmp_path / "in.out.jsonl"
    out.write_text("\n".join(rows) + "\n")
    assert main(["aggregate", str(out), "--vote", "dawid-skene"]) == 0
    last = read_jsonl(out)[-1]
    assert last["output"]["rating"] == "3"  # a string, as the votes that gave it wrote it
