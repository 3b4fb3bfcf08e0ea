"""Blue/green switches under load, failures that keep the old version serving, rollback,
replicas and supervision, with real model-server processes."""

import time

import pytest

from deployments import rollout, services, states
from deployments.models import Deployment, Instance, InstanceState, Status
from deployments.runtime.local import LocalBackend
from portal.demo_models import iris_instances
from registry import services as registry
from tests.factories import bearer_client, deploy_now, make_version
from tests.support import Load, call, eventually, running_instances

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def consumer_token(iris_service, owner, service_account):
    services.grant_create(actor=owner, service=iris_service, user=service_account)
    return bearer_client(service_account, scopes=["invoke"]).raw_token


def test_switching_versions_under_continuous_requests_fails_none(
    iris_service, member, environments, gateway, consumer_token, iris_file
):
    v1 = iris_service.model.versions.get()
    first = deploy_now(iris_service, member, environments["development"], v1)
    url = f"{gateway.url}/serve/development/iris-api/v1/predict"
    assert eventually(lambda: call(url, token=consumer_token, body={"instances": iris_instances(count=1)})[0] == 200)
    v2 = make_version(iris_service.model, iris_file, version="1.1.0")
    with Load(url, consumer_token) as load:
        time.sleep(0.5)
        second = deploy_now(iris_service, member, environments["development"], v2)
        time.sleep(0.5)
    assert load.sent > 20
    assert load.failed == 0, load.failures[:5]
    assert load.versions == {"1.0.0", "1.1.0"}
    first.refresh_from_db()
    assert first.status == Status.SUPERSEDED and second.status == Status.LIVE
    assert not running_instances(f"d{first.pk}-r")  # the old instance drained and stopped
    assert len(running_instances(f"d{second.pk}-r")) == 1


def test_a_failed_rollout_leaves_the_old_version_serving(
    iris_service, member, environments, gateway, consumer_token, tmp_path
):
    v1 = iris_service.model.versions.get()
    first = deploy_now(iris_service, member, environments["development"], v1)
    broken = tmp_path / "broken.py"
    broken.write_text("def predict(instances):\n    raise RuntimeError('broken at serving time')\n")
    bad = make_version(iris_service.model, broken, version="1.2.0", flavor="pyfunc")
    deployment = services.deployment_request(
        actor=member, service=iris_service, version=bad, environment=environments["development"]
    )
    rollout.rollout(deployment.pk, owner="test")
    deployment.refresh_from_db()
    assert deployment.status == Status.FAILED
    assert "Smoke test" in deployment.failure_reason
    assert "previous version keeps serving" in deployment.events.get(step="status:failed").message
    first.refresh_from_db()
    assert first.status == Status.LIVE
    url = f"{gateway.url}/serve/development/iris-api/v1/predict"
    _code, payload, _ = eventually(
        lambda: (r := call(url, token=consumer_token, body={"instances": iris_instances(count=1)}))[0] == 200 and r
    )
    assert payload["model_version"] == "1.0.0"
    assert not running_instances(f"d{deployment.pk}-r")


def test_rollback_restores_the_previous_version(iris_service, member, environments, gateway, consumer_token, iris_file):
    v1 = iris_service.model.versions.get()
    first = deploy_now(iris_service, member, environments["development"], v1)
    second = deploy_now(
        iris_service, member, environments["development"], make_version(iris_service.model, iris_file, version="1.1.0")
    )
    back = services.deployment_rollback(actor=member, deployment=second)
    assert back.version == v1 and back.status == Status.APPROVED
    rollout.rollout(back.pk, owner="test")
    back.refresh_from_db()
    second.refresh_from_db()
    assert back.status == Status.LIVE and second.status == Status.ROLLED_BACK
    url = f"{gateway.url}/serve/development/iris-api/v1/predict"
    assert eventually(
        lambda: (
            call(url, token=consumer_token, body={"instances": iris_instances(count=1)})[1].get("model_version")
            == "1.0.0"
        )
    )
    assert first.pk != back.pk


def test_two_majors_are_live_at_once(iris_service, member, environments, gateway, consumer_token, iris_file):
    deploy_now(iris_service, member, environments["development"], iris_service.model.versions.get())
    renamed = [{f"{k}_cm": v for k, v in i.items()} for i in iris_instances()]
    v2 = make_version(iris_service.model, iris_file, version="2.0.0", instances=renamed)
    deploy_now(iris_service, member, environments["development"], v2)
    base = f"{gateway.url}/serve/development/iris-api"
    assert eventually(
        lambda: call(f"{base}/v2/predict", token=consumer_token, body={"instances": renamed[:1]})[0] == 200
    )
    assert call(f"{base}/v1/predict", token=consumer_token, body={"instances": iris_instances(count=1)})[0] == 200
    # each major validates its own schema
    assert call(f"{base}/v2/predict", token=consumer_token, body={"instances": iris_instances(count=1)})[0] == 422


def test_replicas_balance_and_a_dead_one_is_taken_out(iris_service, member, environments, gateway, consumer_token):
    deployment = deploy_now(
        iris_service, member, environments["development"], iris_service.model.versions.get(), replicas=2
    )
    url = f"{gateway.url}/serve/development/iris-api/v1/predict"
    body = {"instances": iris_instances(count=1)}
    assert eventually(lambda: call(url, token=consumer_token, body=body)[0] == 200)
    ready = list(Instance.objects.filter(deployment=deployment, state=InstanceState.READY))
    assert len(ready) == 2
    # Kill one instance: the gateway takes it out and keeps answering from the other.
    LocalBackend.default().stop(ready[0].name, drain_seconds=1)
    codes = [call(url, token=consumer_token, body=body)[0] for _ in range(20)]
    assert codes.count(200) == 20, codes
    # The supervisor restarts it and records why.
    assert "restarted" in " ".join(rollout.supervise())
    assert eventually(
        lambda: (
            "ready" in " ".join(rollout.supervise())
            or Instance.objects.filter(deployment=deployment, state=InstanceState.READY).count() == 2
        ),
        timeout=30,
    )
    assert deployment.events.filter(message__contains="stopped unexpectedly").exists()
    assert Instance.objects.get(pk=ready[0].pk).restarts == 1


def test_scaling_a_live_deployment(iris_service, member, environments, gateway, consumer_token):
    deployment = deploy_now(iris_service, member, environments["development"], iris_service.model.versions.get())
    services.deployment_scale(actor=member, deployment=deployment, replicas=2)
    rollout.scale(deployment.pk, owner="test")
    assert Instance.objects.filter(deployment=deployment, state=InstanceState.READY).count() == 2
    services.deployment_scale(actor=member, deployment=Deployment.objects.get(pk=deployment.pk), replicas=1)
    rollout.scale(deployment.pk, owner="test")
    assert Instance.objects.filter(deployment=deployment, state=InstanceState.READY).count() == 1
    assert len(running_instances(f"d{deployment.pk}-r")) == 1


def test_instance_names_stay_unique_with_long_service_names(team, owner, iris_file, environments):
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
