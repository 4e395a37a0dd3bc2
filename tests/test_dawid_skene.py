"""Dawid-Skene (batch/labelling/dawid_skene.py) against crowd-kit's `DawidSkene` on the same
votes: the same posteriors, so the same labels."""

from __future__ import annotations

import random

import pytest

from batch.labelling.dawid_skene import Answer, dawid_skene

crowdkit = pytest.importorskip("crowdkit.aggregation")
pd = pytest.importorskip("pandas")

LABELS = ("sport", "weather", "food")
# crowd-kit 1.4 calls pandas in ways pandas 3 deprecates: its warnings, not ours.
pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning:crowdkit", "ignore::FutureWarning:crowdkit"
)


def simulated(rows: int, accuracy: dict[str, float], seed: int) -> list[list[Answer]]:
    """Annotators right with their accuracy, else a wrong label they favour; some abstain."""
    chance = random.Random(seed)
    tasks = []
    for _ in range(rows):
        truth = chance.choice(LABELS)
        answers = []
        for who, p in accuracy.items():
            if chance.random() < 0.1:
                continue  # a failed vote
            wrong = [label for label in LABELS if label != truth]
            answers.append((who, truth if chance.random() < p else wrong[len(who) % 2]))
        tasks.append(answers)
    return tasks


def crowd_kit(tasks: list[list[Answer]]) -> list[dict[str, float]]:
    data = pd.DataFrame(
        [(f"t{i}", who, label) for i, task in enumerate(tasks) for who, label in task],
        columns=["task", "worker", "label"],
    )
    probas = crowdkit.DawidSkene(n_iter=100, tol=1e-5).fit_predict_proba(data)
    return [
        {str(label): float(p) for label, p in probas.loc[f"t{i}"].items()} if task else {}
        for i, task in enumerate(tasks)
    ]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_posteriors_match_crowd_kit(seed: int) -> None:
    tasks = simulated(120, {"a": 0.9, "b": 0.7, "c": 0.55, "d": 0.4}, seed)
    ours, theirs = dawid_skene(tasks), crowd_kit(tasks)
    for mine, expected in zip(ours, theirs, strict=True):
        assert mine.keys() == expected.keys()
        for label, p in expected.items():
            assert mine[label] == pytest.approx(p, abs=1e-6)


def test_repeated_answers_of_one_annotator_count_each() -> None:
    """--samples: a member answers a row several times; each answer is a data row, as in
    crowd-kit when a worker labels a task twice."""
    tasks = simulated(60, {"a": 0.8, "b": 0.6}, 7)
    doubled = [[*task, *task[:1]] for task in tasks]
    ours, theirs = dawid_skene(doubled), crowd_kit(doubled)
    for mine, expected in zip(ours, theirs, strict=True):
        for label, p in expected.items():
            assert mine[label] == pytest.approx(p, abs=1e-6)


def test_a_row_with_no_answer_has_no_posterior() -> None:
    assert dawid_skene([[("a", "x")], [], [("a", "y"), ("b", "y")]])[1] == {}
    assert dawid_skene([[], []]) == [{}, {}]
