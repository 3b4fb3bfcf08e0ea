"""The prediction log with real parts: the gateway process logs, Redis carries, a Celery
worker (with its scheduler) drains into Parquet files, DuckDB reads them back."""

from __future__ import annotations

import datetime as dt
import time

import pytest
import redis
from django.conf import settings

from deployments import services
from gateway import contract
from monitoring import tasks
from monitoring.store import PredictionStore
from portal.demo_models import iris_instances
from scripts.stack import stop
from tests.factories import deploy_now
from tests.support import call, eventually, start_worker

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def live(iris_service, owner, service_account, environments):
    """iris-api live in development, granted to the consumer."""
    deploy_now(iris_service, owner, environments["development"], iris_service.model.versions.get())
    services.grant_create(actor=owner, service=iris_service, user=service_account)
    return iris_service


def predict(gateway, token: str, count: int = 1) -> dict:
    url = f"{gateway.url}/serve/development/iris-api/v1/predict"
    _code, answer, headers = eventually(
        lambda: (r := call(url, token=token, body={"instances": iris_instances(count=count)}))[0] == 200 and r
    )
    assert headers["X-Prediction-Id"] == answer["prediction_id"]
    return answer


def test_predictions_are_logged_drained_into_parquet_and_listed(
    live, gateway, consumer, owner, redis_url, tmp_path, api
):
    ids = [predict(gateway, consumer, count=2)["prediction_id"] for _ in range(5)]
    worker = start_worker(redis_url, tmp_path / "worker.log", beat=True)  # drains every 2 s
    try:
        files = eventually(lambda: list(settings.PREDICTION_LOG_ROOT.rglob("*.parquet")), timeout=30, interval=0.5)
    finally:
        stop(worker)
    day = dt.datetime.now(dt.UTC).date().isoformat()
    assert all(
        f.parent.relative_to(settings.PREDICTION_LOG_ROOT).as_posix().startswith("service=iris-api/") for f in files
    )
    assert {f.parent.name for f in files} == {f"day={day}"}

    listed = api(owner).get("/api/v1/services/iris-api/predictions", {"environment": "development"})
    assert listed.status_code == 200, listed.content
    rows = listed.json()
    assert [r["id"] for r in rows] == sorted(ids, reverse=True)  # newest first
    first = rows[0]
    assert first["version"] == "1.0.0" and first["status"] == 200 and first["instances"] == 2
    assert '"sepal_length"' in first["inputs"] and f'"prediction_id":"{first["id"]}"' in first["outputs"]
    assert first["latency_ms"] > 0


def test_an_owner_turns_sampling_and_payloads_down_and_the_gateway_follows(live, gateway, consumer, owner, api):
    client = api(owner)
    off = client.patch("/api/v1/services/iris-api/logging/development", {"keep_payloads": False}, format="json")
    assert off.status_code == 200 and off.json()["keep_payloads"] is False and off.json()["default"] is False
    eventually(lambda: _logged_payloads(gateway, consumer) is False)  # once the gateway has the change

    none = client.patch("/api/v1/services/iris-api/logging/development", {"sample_rate": 0}, format="json")
    assert none.json()["sample_rate"] == 0.0
    time.sleep(1)  # the next snapshot
    before = tasks.drain_predictions()
    for _ in range(20):
        predict(gateway, consumer)
    time.sleep(0.5)  # past the gateway's flush interval
    assert tasks.drain_predictions() == 0, before

    refused = client.patch("/api/v1/services/iris-api/logging/development", {"sample_rate": 2}, format="json")
    assert refused.status_code == 400 and "sample_rate" in refused.json()["errors"]


def _logged_payloads(gateway, consumer) -> bool | None:
    """Whether a fresh prediction is logged with its payloads (None if not yet on disk)."""
    prediction_id = predict(gateway, consumer)["prediction_id"]
    time.sleep(0.3)
    tasks.drain_predictions()
    rows = PredictionStore(settings.PREDICTION_LOG_ROOT).query(
        "SELECT inputs FROM predictions WHERE id = ?", service="iris-api", params=[prediction_id]
    )
    return None if not rows else rows[0][0] is not None


def test_a_flood_with_a_full_buffer_drops_and_counts_records_and_every_call_succeeds(
    live, gateway_factory, consumer, redis_url
):
    gateway = gateway_factory(GATEWAY_LOG_BUFFER="5")
    answers = [predict(gateway, consumer)["prediction_id"] for _ in range(200)]
    assert len(set(answers)) == 200
    client = redis.Redis.from_url(redis_url)
    kept = 0

    def accounted() -> bool:
        nonlocal kept
        kept += tasks.drain_predictions()
        return kept + int(client.hget(contract.KEY_PREDICTIONS_DROPPED, "development/iris-api/v1") or 0) == 200

    eventually(accounted, timeout=10, interval=0.3)  # every record drained or counted as dropped
    assert 0 < kept < 200


def test_retention_removes_old_days_only(live, owner, environments):
    store = PredictionStore(settings.PREDICTION_LOG_ROOT)
    now = time.time()
    record = ["id", now, "iris-api", "development", 1, "1.0.0", 1, 200, 1.0, 1, None, None]
    store.write([[f"d{age}", now - age * 86400, *record[2:]] for age in (0, 1, 3, 10)])
    services.prediction_logging_set(
        actor=owner, service=live, environment=environments["development"], retention_days=2
    )
    assert tasks.sweep_predictions() == 2
    days = sorted(p.name for p in store.partition("iris-api", "development", "x").parent.iterdir())
    today = dt.datetime.now(dt.UTC).date()
    assert days == [f"day={today - dt.timedelta(days=1)}", f"day={today}"]


def test_someone_who_cannot_see_the_service_sees_none_of_its_predictions(live, outsider, api):
    answer = api(outsider).get("/api/v1/services/iris-api/predictions", {"environment": "development"})
    assert answer.status_code == 404
    refused = api(outsider).patch("/api/v1/services/iris-api/logging/development", {"enabled": False}, format="json")
    assert refused.status_code == 404


def test_compaction_merges_a_days_small_files_into_one_and_loses_nothing(live, owner, member, api):
    store = PredictionStore(settings.PREDICTION_LOG_ROOT)
    now = time.time()
    for n in range(25):  # 25 drains, one file each
        pid = f"{int(now * 1000) + n:011x}" + "0" * 10
        store.write([[pid, now, "iris-api", "development", 1, "1.0.0", 1, 200, 1.0, 1, "{}", '{"predictions":[1]}']])
    api(member).post(
        "/api/v1/services/iris-api/feedback",
        [{"prediction_id": f"{int(now * 1000):011x}" + "0" * 10, "actual": 1}],
        format="json",
    )
    day = store.partition("iris-api", "development", dt.datetime.fromtimestamp(now, dt.UTC).date())
    before = api(member).get("/api/v1/services/iris-api/predictions", {"environment": "development", "limit": 100})
    assert len(list(day.glob("*.parquet"))) == 25

    assert tasks.compact_predictions() == 25  # the feedback day has one file: left alone
    assert len(list(day.glob("*.parquet"))) == 1 and not list(day.glob("*.tmp"))
    after = api(member).get("/api/v1/services/iris-api/predictions", {"environment": "development", "limit": 100})
    assert after.json() == before.json() and len(after.json()) == 25
    assert tasks.compact_predictions() == 0  # one file: nothing to do
    [quality] = api(member).get("/api/v1/services/iris-api/quality", {"environment": "development"}).json()
    assert quality["labelled"] == 1
