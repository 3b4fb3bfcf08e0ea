"""Autoscaling with every part real: model-server processes on the `local` runtime, the gateway
reporting its load to Redis, and the autoscaler process (`manage.py autoscale`) acting through
the rollout engine. Load raises replicas to what the target asks for, they come down after the
cool-down but never below the minimum; a deployment scaled to zero answers its first request
once an instance is up (the cold start recorded), or 503 with Retry-After past the hold."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from django.urls import reverse

from deployments import rollout, services
from deployments.autoscale import Decider, Demand, Target
from deployments.models import Deployment, Instance, InstanceState, Status
from portal.demo_models import iris_instances
from scripts.stack import stop
from tests.factories import bearer_client, make_version
from tests.support import ROOT, Load, _started, call, eventually, portal_env, running_instances

pytestmark = pytest.mark.django_db(transaction=True)

# Each prediction takes a while, so a few clients keep several requests in flight.
SLOW_MODEL = "import time\ndef predict(instances):\n    time.sleep(0.1)\n    return [0 for _ in instances]\n"


@pytest.fixture
def consumer_token(iris_service, owner, service_account):
    services.grant_create(actor=owner, service=iris_service, user=service_account)
    return bearer_client(service_account, scopes=["invoke"]).raw_token


@pytest.fixture
def slow_version(iris_service, tmp_path):
    path = tmp_path / "slow.py"
    path.write_text(SLOW_MODEL)
    return make_version(iris_service.model, path, version="1.1.0", flavor="pyfunc")


@pytest.fixture
def autoscaler(transactional_db, redis_url, tmp_path):
    """The real autoscaler process on the test database and Redis."""
    log = tmp_path / "autoscaler.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "autoscale"],
            cwd=ROOT,
            env=portal_env(redis_url, RUNTIME_DRAIN_SECONDS="2", AUTOSCALE_INTERVAL_SECONDS="0.5"),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proc = _started(proc, log, lambda: b"running" in log.read_bytes(), "autoscaler")
    yield proc
    stop(proc)


def deploy_autoscaled(service, actor, environment, version, **autoscaling) -> Deployment:
    deployment = services.deployment_request(
        actor=actor,
        service=service,
        version=version,
        environment=environment,
        autoscaling=services.Autoscaling(**autoscaling),
    )
    rollout.rollout(deployment.pk, owner="test")
    deployment.refresh_from_db()
    assert deployment.status == Status.LIVE, list(deployment.events.values_list("message", flat=True))
    return deployment


def ready(deployment: Deployment) -> int:
    return Instance.objects.filter(deployment=deployment, state=InstanceState.READY).count()


def events(deployment: Deployment) -> list[str]:
    return list(deployment.events.values_list("message", flat=True))


def test_load_scales_up_to_the_target_and_back_down_to_the_minimum_after_the_cool_down(
    iris_service, member, environments, slow_version, gateway, consumer_token, autoscaler
):
    deployment = deploy_autoscaled(
        iris_service,
        member,
        environments["development"],
        slow_version,
        min_replicas=1,
        max_replicas=3,
        target_in_flight=2,
        scale_down_after_seconds=5,
    )
    url = f"{gateway.url}/serve/development/iris-api/v1/predict"
    assert eventually(lambda: call(url, token=consumer_token, body={"instances": iris_instances(count=1)})[0] == 200)
    loads = [Load(url, consumer_token, timeout=30) for _ in range(6)]
    for load in loads:
        load.__enter__()
    try:
        # Six clients of a model that answers one at a time: ~6 in flight, 2 per replica → 3.
        assert eventually(lambda: ready(deployment) == 3, timeout=60), (
            events(deployment),
            autoscaler.log_path.read_text(),
        )
        deployment.refresh_from_db()
        assert deployment.replicas == 3
        assert any(m.startswith("Scaled 1 → ") and "target 2 per replica" in m for m in events(deployment))
        assert len(running_instances(f"d{deployment.pk}-r")) == 3
        # Traffic goes on through the three of them.
        sent = sum(load.sent for load in loads)
        assert eventually(lambda: sum(load.sent for load in loads) > sent + 60, timeout=30)
    finally:
        for load in loads:
            load.__exit__(None, None, None)
    assert sum(load.failed for load in loads) == 0, [f for load in loads for f in load.failures[:3]]

    # Idle: after the cool-down the autoscaler goes back to the minimum, never below it.
    assert eventually(lambda: ready(deployment) == 1, timeout=60), events(deployment)
    assert eventually(lambda: len(running_instances(f"d{deployment.pk}-r")) == 1, timeout=30)
    time.sleep(6)  # longer than the cool-down: nothing goes lower than min_replicas
    assert ready(deployment) == 1
    deployment.refresh_from_db()
    assert deployment.replicas == 1
    assert any("lower for 5 s" in m for m in events(deployment))
    assert call(url, token=consumer_token, body={"instances": iris_instances(count=1)})[0] == 200


def test_scaled_to_zero_the_first_request_waits_for_a_cold_start_and_is_answered(
    iris_service, member, environments, slow_version, gateway_factory, consumer_token, autoscaler
):
    gateway = gateway_factory(GATEWAY_COLD_START_SECONDS="60")
    deployment = deploy_autoscaled(
        iris_service,
        member,
        environments["development"],
        slow_version,
        min_replicas=0,
        max_replicas=2,
        target_in_flight=4,
        scale_down_after_seconds=5,
    )
    url = f"{gateway.url}/serve/development/iris-api/v1/predict"
    body = {"instances": iris_instances(count=1)}
    assert eventually(lambda: call(url, token=consumer_token, body=body)[0] == 200)
    # Idle past the cool-down: no instance at all, yet the route is still served.
    assert eventually(lambda: not running_instances(f"d{deployment.pk}-r") and ready(deployment) == 0, timeout=60)
    deployment.refresh_from_db()
    assert deployment.replicas == 0 and deployment.status == Status.LIVE

    status, payload, _ = call(url, token=consumer_token, body=body, timeout=90)
    assert status == 200, (payload, events(deployment), autoscaler.log_path.read_text())
    assert payload["predictions"] == [0]
    deployment.refresh_from_db()
    assert deployment.replicas == 1
    # The cold start is recorded on the deployment, as a figure and an event.
    assert eventually(lambda: Deployment.objects.get(pk=deployment.pk).last_cold_start_seconds, timeout=10)
    assert any(m.startswith("Cold start: an instance was serving") for m in events(deployment))
    assert any(m.startswith("Scaled 0 → 1: woke from zero") for m in events(deployment))


def test_a_request_held_past_the_cold_start_limit_gets_503_with_retry_after(
    iris_service, member, environments, slow_version, gateway_factory, consumer_token
):
    # No autoscaler runs: nothing will wake the route.
    gateway = gateway_factory(GATEWAY_COLD_START_SECONDS="2")
    deployment = deploy_autoscaled(
        iris_service,
        member,
        environments["development"],
        slow_version,
        min_replicas=0,
        max_replicas=2,
        target_in_flight=4,
        scale_down_after_seconds=5,
    )
    Deployment.objects.filter(pk=deployment.pk).update(replicas=0)
    rollout.scale(deployment.pk, owner="test")
    assert ready(deployment) == 0
    url = f"{gateway.url}/serve/development/iris-api/v1/predict"
    body = {"instances": iris_instances(count=1)}
    status, payload, headers = eventually(lambda: (r := call(url, token=consumer_token, body=body))[0] != 401 and r)
    assert status == 503, payload
    assert headers["Content-Type"] == "application/problem+json" and int(headers["Retry-After"]) > 0
    assert payload["title"] == "Starting up" and "scaled to zero" in payload["detail"]


# ---------------------------------------------------------------- the policy and its validation


def test_the_policy_scales_up_at_once_and_down_only_after_the_cool_down_to_the_most_it_needed():
    decider = Decider()
    target = Target(1, "development/x/v1", 1, 1, 4, 5, scale_down_after_seconds=10)
    assert decider.decide(target, Demand(in_flight=17), now=0) == 4  # ceil(17 / 5) = 4 (max 4)
    assert decider.decide(target, Demand(in_flight=11), now=0) == 3
    at_three = Target(1, "development/x/v1", 3, 1, 4, 5, scale_down_after_seconds=10)
    assert decider.decide(at_three, Demand(in_flight=0), now=0) is None
    assert decider.decide(at_three, Demand(in_flight=6), now=5) is None  # wants 2: still cooling down
    assert decider.decide(at_three, Demand(in_flight=0), now=10) == 2  # the most wanted meanwhile
    assert decider.decide(at_three, Demand(in_flight=0), now=11) is None  # a new cool-down
    assert decider.decide(at_three, Demand(in_flight=20), now=12) == 4
    zero = Target(2, "development/y/v1", 0, 0, 2, 5, scale_down_after_seconds=10)
    assert decider.decide(zero, Demand(held=1), now=0) == 1  # a held request wakes it


def test_autoscaling_settings_are_validated_with_clear_errors(api, client, member, iris_service, environments):
    client = api(member)
    url = "/api/v1/services/iris-api/deployments"
    refused = client.post(
        url, {"version": "1.0.0", "environment": "staging", "target_in_flight": 4, "min_replicas": 0}, format="json"
    )
    assert refused.status_code == 400 and "does not allow scaling to zero" in refused.content.decode()
    refused = client.post(url, {"version": "1.0.0", "environment": "development", "max_replicas": 3}, format="json")
    assert refused.status_code == 400 and "set target_in_flight too" in refused.content.decode()
    refused = client.post(
        url,
        {"version": "1.0.0", "environment": "development", "target_in_flight": 4, "max_replicas": 99},
        format="json",
    )
    assert refused.status_code == 400 and "max_replicas must be between 1 and 4" in refused.content.decode()
    refused = client.post(
        url,
        {"version": "1.0.0", "environment": "development", "target_in_flight": 4, "min_replicas": 3, "max_replicas": 2},
        format="json",
    )
    assert refused.status_code == 400 and "min_replicas" in refused.content.decode()
    accepted = client.post(
        url, {"version": "1.0.0", "environment": "development", "target_in_flight": 4, "min_replicas": 0}, format="json"
    )
    assert accepted.status_code == 201, accepted.content
    body = accepted.json()
    assert (body["min_replicas"], body["max_replicas"], body["target_in_flight"], body["replicas"]) == (0, 4, 4, 1)
    # The deployment page says how it scales.
    client.force_login(member)
    page = client.get(reverse("deployment_detail", args=[body["id"]])).content.decode()
    assert "Autoscaled: 0 to 4 replicas, aiming at 4 requests in flight each" in page
    assert "to zero when idle" in page
