"""The deployments API: permission matrix and bad input."""

import pytest

from accounts.models import AuditEvent
from deployments.models import Deployment, Environment, Grant

pytestmark = pytest.mark.django_db

CAST = ["admin", "owner", "maintainer", "member", "viewer", "outsider", "service_account"]


def expect(**codes):
    return [pytest.param(who, codes[who], id=who) for who in CAST]


@pytest.fixture
def setup(cast, iris_service, environments):
    return iris_service


@pytest.mark.parametrize(
    "who, code", expect(admin=200, owner=200, maintainer=200, member=200, viewer=200, outsider=404, service_account=404)
)
@pytest.mark.parametrize(
    "path", ["/api/v1/services/iris-api", "/api/v1/services/iris-api/grants", "/api/v1/services/iris-api/deployments"]
)
def test_read(setup, cast, api, who, code, path):
    assert api(cast[who]).get(path).status_code == code


@pytest.mark.parametrize(
    "who, code", expect(admin=201, owner=201, maintainer=201, member=201, viewer=403, outsider=404, service_account=404)
)
def test_request_a_deployment(setup, cast, api, who, code):
    response = api(cast[who]).post(
        "/api/v1/services/iris-api/deployments", {"version": "1.0.0", "environment": "production"}, format="json"
    )
    assert response.status_code == code, response.content


@pytest.mark.parametrize(
    "who, code", expect(admin=201, owner=201, maintainer=201, member=403, viewer=403, outsider=404, service_account=404)
)
def test_grant(setup, cast, api, who, code):
    response = api(cast[who]).post("/api/v1/services/iris-api/grants", {"user": "svc-consumer"}, format="json")
    assert response.status_code == code, response.content


@pytest.mark.parametrize(
    "who, code", expect(admin=204, owner=204, maintainer=204, member=403, viewer=403, outsider=404, service_account=404)
)
def test_revoke_a_grant(setup, cast, api, who, code):
    grant = Grant.objects.get(service=setup)  # the owning team's default grant
    assert api(cast[who]).delete(f"/api/v1/services/iris-api/grants/{grant.pk}").status_code == code


@pytest.mark.parametrize(
    "who, code", expect(admin=200, owner=200, maintainer=200, member=403, viewer=403, outsider=404, service_account=404)
)
def test_change_a_services_cap_on_instances(setup, cast, api, who, code):
    response = api(cast[who]).patch("/api/v1/services/iris-api", {"max_instances": 50}, format="json")
    assert response.status_code == code, response.content
    setup.refresh_from_db()
    assert setup.max_instances == (50 if code == 200 else 1000)
    if code == 200:
        assert response.json()["max_instances"] == 50
        assert AuditEvent.objects.filter(action="service.change", data__changes__max_instances=[1000, 50]).exists()


@pytest.mark.parametrize("payload", [{"max_instances": 0}, {"max_instances": 100_001}, {"replicas": 2}])
def test_bad_service_changes(setup, cast, api, payload):
    response = api(cast["owner"]).patch("/api/v1/services/iris-api", payload, format="json")
    assert response.status_code == 400 and set(payload) <= set(response.json()["errors"]), response.content


@pytest.mark.parametrize(
    "who, code", expect(admin=201, owner=201, maintainer=201, member=201, viewer=403, outsider=404, service_account=404)
)
def test_create_a_service(cast, api, iris_service, who, code):
    response = api(cast[who]).post(
        "/api/v1/services", {"name": "iris-2", "team": "vision", "model": "iris"}, format="json"
    )
    assert response.status_code == code, response.content


def test_approver_sees_the_queue_and_the_deployment(setup, cast, api, approver):
    created = (
        api(cast["member"])
        .post("/api/v1/services/iris-api/deployments", {"version": "1.0.0", "environment": "production"}, format="json")
        .json()
    )
    queue = api(approver).get("/api/v1/deployments/pending").json()
    assert [d["id"] for d in queue] == [created["id"]]
    assert api(cast["member"]).get("/api/v1/deployments/pending").json() == []
    assert api(approver).get(f"/api/v1/deployments/{created['id']}").status_code == 200
    assert api(cast["outsider"]).get(f"/api/v1/deployments/{created['id']}").status_code == 404
    response = api(approver).post(f"/api/v1/deployments/{created['id']}/reject", {}, format="json")
    assert response.status_code == 400 and "Say why" in response.json()["detail"]
    response = api(approver).post(f"/api/v1/deployments/{created['id']}/reject", {"comment": "not yet"}, format="json")
    assert response.status_code == 200 and response.json()["status"] == "rejected"
    again = api(approver).post(f"/api/v1/deployments/{created['id']}/approve", {}, format="json")
    assert again.status_code == 409 and "rejected" in again.json()["detail"]


@pytest.mark.parametrize(
    "payload, status, fragment",
    [
        ({"version": "9.9.9", "environment": "production"}, 400, "has no version 9.9.9"),
        ({"version": "1.0.0", "environment": "moon"}, 400, "No environment named 'moon'"),
        ({"version": "1.0.0", "environment": "production", "replicas": 0}, 400, "between 1 and"),
        ({"version": "1.0.0"}, 400, "environment: This field is required"),
        ({"version": "1.0.0", "environment": "production", "colour": 1}, 400, "Unknown field"),
    ],
)
def test_bad_deployment_requests(setup, cast, api, payload, status, fragment):
    response = api(cast["member"]).post("/api/v1/services/iris-api/deployments", payload, format="json")
    assert response.status_code == status and fragment in response.json()["detail"], response.content
    assert not Deployment.objects.exists()


@pytest.mark.parametrize(
    "payload, status, fragment",
    [
        ({}, 400, "exactly one of"),
        ({"user": "a", "team": "b"}, 400, "exactly one of"),
        ({"user": "ghost"}, 400, "No user named 'ghost'"),
        ({"team": "atlantis"}, 400, "No team named 'atlantis'"),
        ({"team": "vision"}, 409, "may already call"),
    ],
)
def test_bad_grants(setup, cast, api, payload, status, fragment):
    response = api(cast["owner"]).post("/api/v1/services/iris-api/grants", payload, format="json")
    assert response.status_code == status and fragment in response.json()["detail"], response.content


def test_environments(cast, api, environments):
    names = [e["name"] for e in api(cast["member"]).get("/api/v1/environments").json()]
    assert names == ["development", "staging", "production"]
    assert (
        api(cast["member"])
        .patch("/api/v1/environments/staging", {"requires_approval": False}, format="json")
        .status_code
        == 403
    )
    response = api(cast["admin"]).patch("/api/v1/environments/staging", {"max_replicas": 8}, format="json")
    assert response.status_code == 200 and response.json()["max_replicas"] == 8
    bad = api(cast["admin"]).patch("/api/v1/environments/staging", {"runtime": "mainframe"}, format="json")
    assert bad.status_code == 400


def test_an_environment_runs_on_the_swarm_nodes_its_placement_names(cast, api, environments):
    change = {"runtime": "swarm", "placement": ["node.labels.tier==prod", "node.role != manager"]}
    response = api(cast["admin"]).patch("/api/v1/environments/production", change, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["placement"] == ["node.labels.tier==prod", "node.role != manager"]
    listed = {e["name"]: e for e in api(cast["member"]).get("/api/v1/environments").json()}
    assert listed["production"]["runtime"] == "swarm" and listed["development"]["placement"] == []
    bad = api(cast["admin"]).patch(
        "/api/v1/environments/production", {"placement": ["tier=prod", "node.labels.ok==1"]}, format="json"
    )
    assert bad.status_code == 400
    assert "Not a placement constraint: tier=prod" in str(bad.json()["errors"]["placement"])
    assert Environment.objects.get(name="production").placement == change["placement"]  # unchanged by the refusal


def test_a_service_serves_a_model_of_its_own_team(cast, api, iris_service):
    from accounts import services as accounts

    accounts.team_create(actor=cast["owner"], name="other")
    response = api(cast["owner"]).post(
        "/api/v1/services", {"name": "x", "team": "other", "model": "iris"}, format="json"
    )
    assert response.status_code == 400 and "a model of its own team" in response.json()["detail"]


@pytest.mark.parametrize(
    "who, code", expect(admin=200, owner=200, maintainer=200, member=200, viewer=200, outsider=404, service_account=404)
)
def test_logs_of_a_deployment(setup, cast, api, who, code):
    requested = api(cast["owner"]).post(
        "/api/v1/services/iris-api/deployments", {"version": "1.0.0", "environment": "production"}, format="json"
    )
    response = api(cast[who]).get(f"/api/v1/deployments/{requested.json()['id']}/logs")
    assert response.status_code == code
    if code == 200:
        assert response.json() == []  # waiting for approval: nothing runs yet


@pytest.mark.parametrize("tail", ["0", "5001", "abc", "²", "-1"])
def test_logs_tail_must_be_a_small_whole_number(setup, cast, api, tail):
    requested = api(cast["owner"]).post(
        "/api/v1/services/iris-api/deployments", {"version": "1.0.0", "environment": "production"}, format="json"
    )
    response = api(cast["owner"]).get(f"/api/v1/deployments/{requested.json()['id']}/logs", {"tail": tail})
    assert response.status_code == 400 and "tail" in response.json()["detail"]
