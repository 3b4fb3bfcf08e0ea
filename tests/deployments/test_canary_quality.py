"""When a canary's live quality from ground truth counts as a regression (the comparison
itself; tests/deployments/test_canary.py rolls a wrong candidate back with real processes)."""

from __future__ import annotations

import math

import pytest

from deployments.models import Deployment, Environment, Status
from deployments.strategies import Side, Verdict, _quality_regression
from registry.models import ModelVersion


def verdict(metric: str, candidate, stable, labelled=(100, 400), errors=(0.0, 0.0)) -> Verdict:
    return Verdict(
        candidate=Side(requests=500, labelled=labelled[0], quality=candidate, quality_error=errors[0]),
        stable=Side(requests=2000, labelled=labelled[1], quality=stable, quality_error=errors[1]),
        judged=True,
        quality_metric=metric,
    )


def accuracy_error(accuracy: float, outcomes: int) -> float:
    return math.sqrt(accuracy * (1 - accuracy) / outcomes)


@pytest.mark.parametrize(
    ("metric", "candidate", "stable", "rolled_back"),
    [
        ("accuracy", 0.90, 0.90, False),
        ("accuracy", 0.86, 0.90, False),  # 0.86 >= 0.95 x 0.90 = 0.855
        ("accuracy", 0.85, 0.90, True),
        ("accuracy", 0.99, 0.90, False),  # better is never a regression
        ("rmse", 1.05, 1.0, False),  # at most 1.05 x stable's error
        ("rmse", 1.06, 1.0, True),
        ("rmse", 0.5, 1.0, False),
        ("rmse", 0.01, 0.0, True),  # stable makes no error at all, the candidate does
    ],
)
def test_worse_by_more_than_the_environments_share_rolls_back(metric, candidate, stable, rolled_back):
    environment = Environment(name="staging")  # the defaults: 5 % worse at most, 50 outcomes each
    reason = _quality_regression(environment, verdict(metric, candidate, stable))
    assert bool(reason) is rolled_back, reason
    if rolled_back:
        assert reason.startswith(f"live {'accuracy' if metric == 'accuracy' else 'RMSE'} ")
        assert "on stable from ground truth" in reason and "over 100 and 400 predictions with outcomes" in reason


@pytest.mark.parametrize(
    ("outcomes", "rolled_back"),
    [
        ((50, 500), False),  # 80 % of 50 vs 90 % of 500: within what luck gives
        ((200, 2000), False),
        ((2000, 8000), True),  # the same accuracies on more outcomes: a real drop
    ],
)
def test_a_drop_counts_only_beyond_what_chance_gives_that_many_outcomes(outcomes, rolled_back):
    environment = Environment(name="staging")
    errors = (accuracy_error(0.80, outcomes[0]), accuracy_error(0.90, outcomes[1]))
    reason = _quality_regression(environment, verdict("accuracy", 0.80, 0.90, labelled=outcomes, errors=errors))
    assert bool(reason) is rolled_back, reason


def test_an_rmse_counts_beyond_its_standard_error():
    environment = Environment(name="staging")
    assert _quality_regression(environment, verdict("rmse", 1.2, 1.0, errors=(0.1, 0.02))) == ""
    assert _quality_regression(environment, verdict("rmse", 1.2, 1.0, errors=(0.03, 0.01)))


def test_too_few_outcomes_on_either_side_say_nothing_yet():
    environment = Environment(name="staging", canary_min_outcomes=50)
    assert _quality_regression(environment, verdict("accuracy", 0.0, 1.0, labelled=(49, 400))) == ""
    assert _quality_regression(environment, verdict("accuracy", 0.0, 1.0, labelled=(50, 49))) == ""
    assert _quality_regression(environment, verdict("accuracy", 0.0, 1.0, labelled=(50, 50)))
    assert _quality_regression(environment, verdict("", 0.0, 1.0)) == ""  # a task without a metric to compare
    assert _quality_regression(environment, verdict("accuracy", None, 1.0)) == ""


def test_the_message_gives_the_numbers():
    environment = Environment(name="staging", canary_max_quality_drop=0.1)
    reason = _quality_regression(environment, verdict("accuracy", 0.5, 0.875))
    assert reason == (
        "live accuracy 50 % vs 87.5 % on stable from ground truth (limit x0.9 of stable's) over 100 and 400 "
        "predictions with outcomes"
    )


def test_the_verdict_says_what_it_waits_for():
    environment = Environment(name="staging", canary_min_requests=50, canary_min_outcomes=50)
    deployment = Deployment(environment=environment, version=ModelVersion(version="1.1.0"), status=Status.CANARY)
    waiting = verdict("accuracy", 0.2, 0.9, labelled=(37, 140))
    waiting.judged = False
    waiting.candidate.requests = 12
    assert waiting.text(deployment) == "Waiting for 50 requests to 1.1.0 before judging, 12 so far."
    waiting.judged = True
    assert waiting.text(deployment) == (
        "Within the thresholds so far. Live accuracy is compared once each version has 50 predictions with "
        "outcomes (37 and 140 so far)."
    )
    assert verdict("accuracy", 0.9, 0.9).text(deployment) == "Within the thresholds so far."
    assert verdict("", None, None).text(deployment) == "Within the thresholds so far."  # nothing to compare
    worse = verdict("accuracy", 0.2, 0.9)
    worse.regression = _quality_regression(environment, worse)
    assert worse.text(deployment) == f"Regression: {worse.regression}."
