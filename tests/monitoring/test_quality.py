"""Live quality from real Parquet files through DuckDB, against numbers worked out by hand."""

from __future__ import annotations

import json
import time

import pytest
from django.conf import settings

from monitoring.store import PredictionStore
from tests.factories import make_version

pytestmark = pytest.mark.django_db


def logged(store: PredictionStore, service: str, version: str, predictions: list, *, age_days: float = 0) -> list[str]:
    """One logged single-instance prediction per value; their ids."""
    now = time.time() - age_days * 86400
    ids = [f"{int(now * 1000) + n:011x}" + "0" * 10 for n in range(len(predictions))]
    store.write(
        [
            [pid, now, service, "development", 1, version, 1, 200, 1.0, 1, "{}", json.dumps({"predictions": [value]})]
            for pid, value in zip(ids, predictions, strict=True)
        ]
    )
    return ids


def registered_accuracy(service, value: float) -> None:
    version = service.model.versions.get(version="1.0.0")
    version.metrics = {"accuracy": value, "notes": "not a number: not shown"}
    version.save()


def test_classification_metrics_and_confusion_match_the_hand_computed_case(iris_service, member, api):
    registered_accuracy(iris_service, 0.95)
    store = PredictionStore(settings.PREDICTION_LOG_ROOT)
    ids = logged(store, "iris-api", "1.0.0", [0, 0, 1, 1, 2, 2])
    outcomes = [{"prediction_id": i, "actual": a} for i, a in zip(ids, [0, 1, 1, 1, 2, 0], strict=True)]
    assert api(member).post("/api/v1/services/iris-api/feedback", outcomes, format="json").json()["accepted"] == 6
    old = logged(store, "iris-api", "1.0.0", [2], age_days=10)  # outside the 7-day window
    api(member).post("/api/v1/services/iris-api/feedback", [{"prediction_id": old[0], "actual": 0}], format="json")

    answer = api(member).get("/api/v1/services/iris-api/quality", {"environment": "development"})
    assert answer.status_code == 200, answer.content
    [quality] = answer.json()
    assert quality["version"] == "1.0.0" and quality["task"] == "classification" and quality["labelled"] == 6
    # accuracy 4/6; per label P (0.5, 1, 0.5), R (0.5, 2/3, 1), F1 (0.5, 0.8, 2/3)
    assert quality["metrics"] == pytest.approx(
        {"accuracy": 4 / 6, "precision_macro": 2 / 3, "recall_macro": 13 / 18, "f1_macro": (0.5 + 0.8 + 2 / 3) / 3}
    )
    assert quality["labels"] == ["0", "1", "2"]
    assert quality["confusion"] == [[1, 0, 1], [1, 2, 0], [0, 0, 1]]
    assert quality["registered"] == {"accuracy": 0.95}


def test_regression_metrics_match_the_hand_computed_case(iris_service, owner, member, api, iris_file):
    version = make_version(iris_service.model, iris_file, version="1.1.0", actor=owner)
    version.task = "regression"
    version.save()
    store = PredictionStore(settings.PREDICTION_LOG_ROOT)
    ids = logged(store, "iris-api", "1.1.0", [1.0, 2.0, 3.0])
    outcomes = [{"prediction_id": i, "actual": a} for i, a in zip(ids, [1, 3, 5], strict=True)]
    api(member).post("/api/v1/services/iris-api/feedback", outcomes, format="json")
    [quality] = api(member).get("/api/v1/services/iris-api/quality", {"environment": "development"}).json()
    # errors 0, 1, 2: MAE 1, RMSE sqrt(5/3); R² = 1 - 5 / 8
    assert quality["metrics"] == pytest.approx({"mae": 1.0, "rmse": (5 / 3) ** 0.5, "r2": 0.375})
    assert "standard_errors" not in quality
    # What a canary allows for: squared errors 0, 1, 4 have the variance 17/3 - (5/3)² = 26/9,
    # so their mean the standard error sqrt(26/27), and the RMSE about half of that over itself.
    from monitoring.selectors import versions_quality

    [read] = versions_quality(
        service="iris-api", environment="development", tasks={"1.1.0": "regression"}, since=0, until=time.time() + 1
    ).values()
    assert read.standard_errors == {"rmse": pytest.approx((26 / 27) ** 0.5 / (2 * (5 / 3) ** 0.5))}


def test_several_instances_take_one_outcome_each_and_mismatches_are_counted(iris_service, member, api):
    store = PredictionStore(settings.PREDICTION_LOG_ROOT)
    now = time.time()
    pid, bad = f"{int(now * 1000):011x}" + "1" * 10, f"{int(now * 1000):011x}" + "2" * 10
    answer = json.dumps({"predictions": [0, 1, 2]})
    store.write([[p, now, "iris-api", "development", 1, "1.0.0", 1, 200, 1.0, 3, "{}", answer] for p in (pid, bad)])
    outcomes = [{"prediction_id": pid, "actual": [0, 1, 1]}, {"prediction_id": bad, "actual": 2}]
    api(member).post("/api/v1/services/iris-api/feedback", outcomes, format="json")
    [quality] = api(member).get("/api/v1/services/iris-api/quality", {"environment": "development"}).json()
    assert quality["labelled"] == 3 and quality["metrics"]["accuracy"] == pytest.approx(2 / 3)
    assert quality["unusable"] == 1


def test_the_task_is_declared_or_inferred_at_registration(iris_service, member, api, iris_file):
    from tests.factories import register

    assert register(api(member), "iris", iris_file, version="1.1.0").json()["task"] == "classification"
    declared = register(api(member), "iris", iris_file, version="1.2.0", task="regression")
    assert declared.json()["task"] == "regression"
    refused = register(api(member), "iris", iris_file, version="1.3.0", task="ranking")
    assert refused.status_code == 400 and "task must be one of classification, regression" in refused.json()["detail"]


def test_the_page_shows_live_beside_registered(iris_service, member, api):
    from django.test import Client

    registered_accuracy(iris_service, 0.95)
    store = PredictionStore(settings.PREDICTION_LOG_ROOT)
    ids = logged(store, "iris-api", "1.0.0", [0, 1])
    api(member).post(
        "/api/v1/services/iris-api/feedback", [{"prediction_id": i, "actual": 0} for i in ids], format="json"
    )
    client = Client()
    client.force_login(member)
    html = client.get("/services/iris-api/performance/?environment=development").content.decode()
    assert "Registered accuracy 0.950; live <strong>0.500</strong> over 2 labelled predictions" in html
    assert "Confusion matrix" in html
    empty = client.get("/services/iris-api/performance/?environment=production").content.decode()
    assert "No ground truth for predictions in production in this window." in empty


def test_someone_who_cannot_see_the_service_sees_no_quality(iris_service, outsider, api):
    answer = api(outsider).get("/api/v1/services/iris-api/quality", {"environment": "development"})
    assert answer.status_code == 404


def test_canary_steps_read_each_versions_quality_in_their_window_through_the_hook(iris_service, owner, iris_file):
    from deployments import strategies
    from monitoring.selectors import versions_quality

    assert strategies._quality_reader is versions_quality  # registered as the apps started
    make_version(iris_service.model, iris_file, version="1.1.0", actor=owner)
    store = PredictionStore(settings.PREDICTION_LOG_ROOT)
    before = logged(store, "iris-api", "1.1.0", [0, 0], age_days=1 / 24)  # an hour ago: before the step
    since = time.time() - 60
    stable = logged(store, "iris-api", "1.0.0", [0, 1, 2, 2])
    time.sleep(0.01)  # ids are made of the millisecond
    candidate = logged(store, "iris-api", "1.1.0", [0, 0, 0])
    truth = [0, 1, 2, 0, 0, 1, 2, 0, 0]  # stable 3 of 4 right, the candidate 1 of 3, the earlier 2 both right
    store.write_feedback(
        "iris-api", [(i, json.dumps(a), "owner") for i, a in zip(stable + candidate + before, truth, strict=True)]
    )
    read = versions_quality(
        service="iris-api",
        environment="development",
        tasks={"1.0.0": "classification", "1.1.0": "classification"},
        since=since,
        until=time.time() + 1,
    )
    assert read["1.0.0"].labelled == 4 and read["1.0.0"].metrics["accuracy"] == pytest.approx(3 / 4)
    assert read["1.1.0"].labelled == 3 and read["1.1.0"].metrics["accuracy"] == pytest.approx(1 / 3)
    # How far off by chance: sqrt(p (1 - p) / n).
    assert read["1.0.0"].standard_errors == {"accuracy": pytest.approx((3 / 4 * 1 / 4 / 4) ** 0.5)}
    assert (
        versions_quality(
            service="iris-api", environment="staging", tasks={"1.0.0": "classification"}, since=since, until=time.time()
        )
        == {}
    )
