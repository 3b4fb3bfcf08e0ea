"""Register, request production, approve, go live, predict through the gateway: every part real
(Redis, a Celery worker, model-server processes, the gateway)."""

import pytest

from deployments.models import Instance, InstanceState, Status
from portal.demo_models import iris_instances
from tests.factories import bearer_client, register
from tests.support import call, eventually, wait_for_status

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_from_registration_to_a_prediction(
    api, team, owner, member, approver, service_account, celery_worker, gateway, iris_file, environments
):
    scientist = api(member)
    assert scientist.post("/api/v1/models", {"name": "iris", "team": "vision"}, format="json").status_code == 201
    assert register(scientist, "iris", iris_file).status_code == 201
    response = scientist.post(
        "/api/v1/services", {"name": "iris-api", "team": "vision", "model": "iris"}, format="json"
    )
    assert response.status_code == 201, response.content
    response = scientist.post(
        "/api/v1/services/iris-api/deployments", {"version": "1.0.0", "environment": "production"}, format="json"
    )
    assert response.status_code == 201 and response.json()["status"] == "pending_approval"
    deployment_id = response.json()["id"]

    assert api(member).post(f"/api/v1/deployments/{deployment_id}/approve", {}, format="json").status_code == 403
    response = api(approver).post(f"/api/v1/deployments/{deployment_id}/approve", {"comment": "ship it"}, format="json")
    assert response.status_code == 200, response.content
    deployment = wait_for_status(deployment_id, {Status.LIVE, Status.FAILED})
    assert deployment.status == Status.LIVE, list(deployment.events.values_list("message", flat=True))
    assert Instance.objects.filter(deployment=deployment, state=InstanceState.READY).count() == 1
    assert eventually(lambda: deployment.events.filter(step="switch").exists())
    steps = set(deployment.events.exclude(step="").values_list("step", flat=True))
    assert {"status:approved", "status:provisioning", "status:live", "switch"} <= steps

    # A consumer with a token and a grant calls it.
    consumer = bearer_client(service_account, scopes=["invoke"]).raw_token
    endpoint = f"{gateway.url}/serve/production/iris-api/v1/predict"
    body = {"instances": iris_instances()}
    # The new token reaches the gateway within moments; without a grant it is refused.
    status, payload, _ = eventually(lambda: (r := call(endpoint, token=consumer, body=body))[0] != 401 and r)
    assert status == 403 and "has no grant" in payload["detail"], payload
    grant = api(owner).post("/api/v1/services/iris-api/grants", {"user": service_account.username}, format="json")
    assert grant.status_code == 201, grant.content
    status, payload, _ = eventually(lambda: (r := call(endpoint, token=consumer, body=body))[0] == 200 and r)
    assert payload.pop("prediction_id") and payload == {"predictions": [0, 1, 2], "model_version": "1.0.0"}

    status, info, _ = call(f"{gateway.url}/serve/production/iris-api/v1", token=consumer)
    assert status == 200 and info["model_version"] == "1.0.0" and "sepal_length" in info["input_schema"]["properties"]

    # The service page and the API show it live.
    live = api(member).get("/api/v1/services/iris-api").json()["live"]
    assert live == [
        {
            "environment": "production",
            "major": 1,
            "version": "1.0.0",
            "deployment": deployment_id,
            "endpoint": live[0]["endpoint"],
            "deprecated": False,
        }
    ]
