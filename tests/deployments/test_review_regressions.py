"""Regression tests for defects found in review: gateway inputs, validation engines, instance
names, the switch order and lost leases."""

import pytest

from deployments import rollout, services, states
from deployments.models import Deployment, Status
from gateway.state import _compile
from tests.conftest import bearer_client
from tests.deployments.helpers import call, deploy_now, eventually

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_gateway_validator_follows_draft_2020_12():
    prefixed = _compile({"type": "array", "prefixItems": [{"type": "integer"}]})
    with pytest.raises(Exception):  # noqa: B017 - whatever the engine raises
        prefixed(["x"])
    prefixed([1, "anything"])
    # format is an annotation in 2020-12 (the registry's check): not enforced here either
    _compile({"type": "string", "format": "email"})("not an email")


def test_bodies_that_are_not_json_answer_400(iris_service, member, environments, gateway, owner, service_account):
    deploy_now(iris_service, member, environments["development"], iris_service.model.versions.get())
    services.grant_create(actor=owner, service=iris_service, user=service_account)
    token = bearer_client(service_account, scopes=["invoke"]).raw_token
    url = f"{gateway.url}/serve/development/iris-api/v1/predict"
    assert eventually(lambda: call(url, token=token, body=b'{"instances": [[1,2,3,4]]}')[0] in (200, 422))
    for body in (b'{"instances": [' + b"[" * 50_000 + b"]" * 50_000 + b"]}", b'{"instances": [{"sepal_length": NaN}]}'):
        code, problem, _ = call(url, token=token, body=body)
        assert code == 400 and problem["title"] == "Malformed JSON", problem


def test_instance_names_stay_unique_with_long_service_names(team, owner, iris_file, environments):
    from registry import services as registry
    from tests.portal.conftest import make_version

    model = registry.registered_model_create(actor=owner, name="iris", team=team)
    version = make_version(model, iris_file, actor=owner)
    service = services.service_create(actor=owner, name="s" * 95, team=team, model=model)
    one = services.deployment_request(
        actor=owner, service=service, version=version, environment=environments["staging"]
    )
    Deployment.objects.filter(pk=one.pk).update(status=Status.CANCELLED)
    two = services.deployment_request(
        actor=owner, service=service, version=version, environment=environments["staging"]
    )
    names = {rollout.instance_name(d, r) for d in (one, two) for r in (0, 1)}
    assert len(names) == 4 and all(len(n) <= 100 for n in names)


def test_a_switch_that_cannot_go_live_leaves_the_old_version_live(iris_service, member, environments, iris_file):
    from tests.portal.conftest import make_version

    old = deploy_now(iris_service, member, environments["development"], iris_service.model.versions.get())
    new = services.deployment_request(
        actor=member,
        service=iris_service,
        version=make_version(iris_service.model, iris_file, version="1.1.0"),
        environment=environments["development"],
    )
    states.transition(new, Status.PROVISIONING, message="x")
    states.transition(new, Status.FAILED, message="another worker failed it")
    rollout._switch(new)
    old.refresh_from_db()
    assert old.status == Status.LIVE


def test_a_worker_that_lost_its_lease_stops_and_changes_nothing(iris_service, member, environments):
    deployment = services.deployment_request(
        actor=member,
        service=iris_service,
        version=iris_service.model.versions.get(),
        environment=environments["development"],
    )
    assert rollout.claim(deployment.pk, "worker-a")
    Deployment.objects.filter(pk=deployment.pk).update(lease_owner="worker-b")  # b took over after a expired
    with pytest.raises(rollout.LeaseLost):
        rollout.renew(deployment.pk, "worker-a")
    rollout._fail(deployment, None, "late failure from a", "worker-a")
    assert Deployment.objects.get(pk=deployment.pk).status == Status.APPROVED
