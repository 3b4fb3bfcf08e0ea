"""'Live' means served (issue part 5), with a real gateway process and real model servers: the
moment a deployment reads `live`, every call the gateway answers comes from the new version;
and a grant works at the gateway (and a revoked one is refused) by the time the service that
made the change has answered. Counted outcomes of calls made right after, no timing."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from deployments import rollout, services
from deployments.models import Deployment, Grant, Status
from portal.demo_models import iris_instances
from tests.factories import bearer_client, deploy_now, make_version
from tests.support import call

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.end_to_end]

BODY = {"instances": iris_instances(count=1)}
CALLS_AFTER_LIVE = 25
CYCLES = 30  # grant, call, revoke, call


def _roll_out_in_a_thread(deployment_id: int, done: threading.Event, errors: list) -> threading.Thread:
    def run() -> None:
        try:
            rollout.rollout(deployment_id, owner="test-live")
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            connection.close()
            done.set()

    thread = threading.Thread(target=run, name="rollout")
    thread.start()
    return thread


def test_every_call_after_live_is_served_by_the_new_version(
    iris_service, owner, service_account, environments, gateway, iris_file
):
    development = environments["development"]
    deploy_now(iris_service, owner, development, iris_service.model.versions.get())
    services.grant_create(actor=owner, service=iris_service, user=service_account)
    token = bearer_client(service_account, scopes=["invoke"]).raw_token
    url = f"{gateway.url}/serve/development/iris-api/v1/predict"
    assert call(url, token=token, body=BODY)[1]["model_version"] == "1.0.0"

    answers: list[str] = []
    for version in ("1.1.0", "1.2.0", "1.3.0"):
        make_version(iris_service.model, iris_file, version=version, actor=owner)
        deployment = services.deployment_request(
            actor=owner,
            service=iris_service,
            version=iris_service.model.versions.get(version=version),
            environment=development,
        )
        done, errors = threading.Event(), []
        thread = _roll_out_in_a_thread(deployment.pk, done, errors)
        # Watch the status as the API reads it; the first moment it says live, call the gateway.
        live = Deployment.objects.filter(pk=deployment.pk, status=Status.LIVE)
        while not live.exists():
            assert not done.is_set() or live.exists(), (
                errors,
                list(deployment.events.values_list("message", flat=True)),
            )
        for _ in range(CALLS_AFTER_LIVE):
            status, body, _headers = call(url, token=token, body=BODY)
            assert status == 200, body
            answers.append(body["model_version"])
            assert body["model_version"] == version, f"a call after {version} was live got {answers[-1]}"
        thread.join(60)
        assert not errors, errors
    assert len(answers) == 3 * CALLS_AFTER_LIVE


def test_a_grant_works_and_a_revocation_holds_once_the_service_has_answered(
    iris_service, owner, service_account, environments, gateway
):
    deploy_now(iris_service, owner, environments["development"], iris_service.model.versions.get())
    token = bearer_client(service_account, scopes=["invoke"]).raw_token
    url = f"{gateway.url}/serve/development/iris-api/v1/predict"
    assert call(url, token=token, body=BODY)[0] == 403
    outcomes = []
    for _ in range(CYCLES):
        services.grant_create(actor=owner, service=iris_service, user=service_account)
        outcomes.append(call(url, token=token, body=BODY)[0])
        services.grant_revoke(actor=owner, grant=Grant.objects.get(service=iris_service, user=service_account))
        outcomes.append(call(url, token=token, body=BODY)[0])
    assert outcomes == [200, 403] * CYCLES
