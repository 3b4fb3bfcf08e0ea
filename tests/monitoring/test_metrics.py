"""Operators' metrics: the gateway's and the portal's /metrics, in Prometheus's format."""

from __future__ import annotations

import pytest
import redis
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from deployments import services
from gateway import contract
from monitoring.exposition import KEY_TASKS
from portal.demo_models import iris_instances
from scripts.stack import stop
from tests.factories import bearer_client, deploy_now
from tests.support import call, eventually, start_worker

pytestmark = pytest.mark.django_db(transaction=True)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(url: str, token: str | None) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - a local URL
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - a local URL
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_gateway_counts_requests_per_route_and_outcome_for_those_with_the_token(
    iris_service, owner, service_account, environments, gateway_factory, redis_url
):
    deploy_now(iris_service, owner, environments["development"], iris_service.model.versions.get())
    services.grant_create(actor=owner, service=iris_service, user=service_account)
    consumer = bearer_client(service_account, scopes=["invoke"]).raw_token
    gateway = gateway_factory(GATEWAY_METRICS_TOKEN="scrape-me", GATEWAY_LOG_BUFFER="1")
    url = f"{gateway.url}/serve/development/iris-api/v1/predict"
    eventually(lambda: call(url, token=consumer, body={"instances": iris_instances()})[0] == 200)
    for _ in range(30):  # faster than the log's 0.2 s flushes: its one-record buffer overflows
        assert call(url, token=consumer, body={"instances": iris_instances()})[0] == 200
    assert call(url, token=consumer, body={"instances": [{"sepal_length": "x"}]})[0] == 422
    assert call(url, token="ptl_nobody", body={"instances": iris_instances()})[0] == 401

    assert scrape(f"{gateway.url}/metrics", None)[0] == 401
    assert scrape(f"{gateway.url}/metrics", "wrong")[0] == 401
    status, text = scrape(f"{gateway.url}/metrics", "scrape-me")
    assert status == 200
    seen = samples(text)
    route = (("environment", "development"), ("major", "1"), ("service", "iris-api"))
    ok = ("portal_gateway_requests_total", tuple(sorted((*route, ("code", "200"), ("version", "1.0.0")))))
    assert seen[ok] >= 31  # the first call may have been retried until the route was there
    refused = ("portal_gateway_requests_total", tuple(sorted((*route, ("code", "422"), ("version", "1.0.0")))))
    assert seen[refused] == 1
    assert seen[("portal_gateway_requests_refused_total", (("code", "401"),))] == 1
    assert seen[("portal_gateway_request_duration_seconds_count", route)] == seen[ok] + 1
    assert seen[("portal_gateway_requests_in_flight", ())] == 1  # the scrape itself
    assert seen[("portal_gateway_snapshot_generation", ())] > 0
    assert seen[("portal_gateway_prediction_log_dropped_total", (("route", "development/iris-api/v1"),))] > 0
    assert all(name != "consumer" for _, labels in seen for name, _ in labels)  # no caller in any label

    off = gateway_factory()
    assert scrape(f"{off.url}/metrics", "scrape-me")[0] == 404


def test_the_portal_shows_queues_task_outcomes_and_the_log_backlog(settings, redis_url, tmp_path):
    client = redis.Redis.from_url(redis_url)
    client.delete(KEY_TASKS, contract.KEY_PREDICTIONS_DROPPED)
    client.hset(contract.KEY_PREDICTIONS_DROPPED, "production/churn/v2", 7)
    web = Client()
    settings.PORTAL_METRICS_TOKEN = ""
    assert web.get("/metrics").status_code == 404
    settings.PORTAL_METRICS_TOKEN = "scrape-me"
    assert web.get("/metrics").status_code == 401
    assert web.get("/metrics", HTTP_AUTHORIZATION="Bearer nope").status_code == 401

    from portal.tasks import ping

    worker = start_worker(redis_url, tmp_path / "worker.log")
    try:
        assert "pong" in ping.delay().get(timeout=30)

        def counted() -> dict:
            answer = web.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-me")
            assert answer.status_code == 200 and answer["Content-Type"].startswith("text/plain")
            return samples(answer.content.decode())

        seen = eventually(
            lambda: (
                (s := counted()).get(("portal_celery_tasks_total", (("state", "SUCCESS"), ("task", "portal.ping"))))
                and s
            )
        )
    finally:
        stop(worker)
    assert ("portal_celery_queue_length", (("queue", "celery"),)) in seen
    assert seen[("portal_prediction_log_dropped_total", (("route", "production/churn/v2"),))] == 7
    assert ("portal_prediction_log_backlog_batches", ()) in seen
