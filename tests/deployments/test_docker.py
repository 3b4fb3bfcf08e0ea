"""The docker runtime against a real Docker Engine: images, containers, blue/green, reconciliation.

`make test` starts an engine and builds the base image where it can (as root, as in CI).
Elsewhere these tests skip and say why; in CI they fail instead.
"""

import time

import pytest

from deployments import rollout, services
from deployments.models import Instance, InstanceState, Status
from portal.demo_models import iris_instances
from tests.factories import bearer_client, deploy_now, make_version
from tests.support import Load, call, eventually

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def consumer(iris_service, owner, service_account):
    services.grant_create(actor=owner, service=iris_service, user=service_account)
    return bearer_client(service_account, scopes=["invoke"]).raw_token


def test_deploy_in_a_container_and_predict_through_the_gateway(
    iris_service, member, docker_env, docker_engine, gateway, consumer
):
    from deployments.runtime.images import image_exists, model_image_tag

    version = iris_service.model.versions.get()
    tag = model_image_tag(service="iris-api", version=version.version, sha256=version.artifact.sha256)
    if image_exists(docker_engine.client, tag):  # left by an earlier run on this engine: build it afresh
        docker_engine.client.images.remove(tag, force=True)
    deployment = deploy_now(iris_service, member, docker_env, version)
    instance = Instance.objects.get(deployment=deployment)
    # No network: it answers on a unix socket in a directory of its own, mounted into it.
    assert instance.backend == "docker" and instance.url.startswith("unix:") and instance.url.endswith("/model.sock")
    url = f"{gateway.url}/serve/development/iris-api/v1/predict"
    _code, payload, _ = eventually(
        lambda: (r := call(url, token=consumer, body={"instances": iris_instances()}))[0] == 200 and r
    )
    assert payload["predictions"] == [0, 1, 2]

    container = docker_engine.client.containers.get(instance.name)
    config = container.attrs["HostConfig"]
    assert config["ReadonlyRootfs"] and config["CapDrop"] == ["ALL"] and "no-new-privileges" in config["SecurityOpt"]
    assert config["Memory"] == 512 * 1024 * 1024 and config["NanoCpus"] == 1_000_000_000
    assert container.attrs["Config"]["User"] == "65534:65534"
    assert container.labels["portal.deployment"] == str(deployment.pk)
    assert config["NetworkMode"] == "none" and not config.get("PortBindings")
    assert [m["Destination"] for m in container.attrs["Mounts"]] == ["/run/model"]
    assert container.attrs["Config"]["Healthcheck"]["Test"] == ["CMD", "python", "-m", "modelserver.health"]
    assert eventually(lambda: (container.reload(), container.attrs["State"]["Health"]["Status"])[1] == "healthy")
    messages = " ".join(deployment.events.values_list("message", flat=True))
    assert "Building image" in messages and "Step 1/" in messages  # the build's output, streamed into events
    # The container's log is on the deployment page.
    from django.test import Client

    client = Client()
    client.force_login(member)
    assert "loaded sklearn model" in client.get(f"/deployments/{deployment.pk}/").content.decode()


def test_switch_rollback_and_image_reuse_under_load(
    iris_service, member, docker_env, docker_engine, gateway, consumer, iris_file
):
    v1 = iris_service.model.versions.get()
    first = deploy_now(iris_service, member, docker_env, v1)
    url = f"{gateway.url}/serve/development/iris-api/v1/predict"
    assert eventually(lambda: call(url, token=consumer, body={"instances": iris_instances(count=1)})[0] == 200)
    v2 = make_version(iris_service.model, iris_file, version="1.1.0")
    with Load(url, consumer) as load:
        time.sleep(0.5)
        second = deploy_now(iris_service, member, docker_env, v2)
        time.sleep(0.5)
        back = services.deployment_rollback(actor=member, deployment=second)
        rollout.rollout(back.pk, owner="test")
        time.sleep(0.5)
    assert load.failed == 0 and load.sent > 20, load.failures[:3]
    back.refresh_from_db()
    second.refresh_from_db()
    assert back.status == Status.LIVE and second.status == Status.ROLLED_BACK
    # The rollback deployed 1.0.0 again: its image was reused, not rebuilt.
    assert "Reusing image" in " ".join(back.events.values_list("message", flat=True))
    live_names = set(docker_engine.list())
    assert not any(n.startswith((f"d{first.pk}-r", f"d{second.pk}-r")) for n in live_names)


def test_a_killed_container_is_restarted_and_strays_are_removed(
    iris_service, member, docker_env, docker_engine, settings
):
    deployment = deploy_now(iris_service, member, docker_env, iris_service.model.versions.get())
    instance = Instance.objects.get(deployment=deployment)
    docker_engine.client.containers.get(instance.name).kill()
    assert eventually(lambda: not docker_engine.status(instance.name).running)
    assert f"restarted {instance.name}" in rollout.supervise()
    assert eventually(
        lambda: (
            "ready" in " ".join(rollout.supervise())
            or Instance.objects.get(pk=instance.pk).state == InstanceState.READY
        ),
        timeout=60,
    )
    assert deployment.events.filter(message__contains="stopped unexpectedly").exists()
    # A container no deployment owns is removed once its grace period is over.
    settings.DOCKER_ORPHAN_GRACE_SECONDS = 0
    image = docker_engine.client.containers.get(instance.name).image
    docker_engine.client.containers.run(
        image, name="stray-model", detach=True, labels={"portal.instance": "stray-model"}
    )
    assert "removed orphan stray-model" in rollout.supervise()
    assert "stray-model" not in docker_engine.list()
    from accounts.models import AuditEvent

    assert AuditEvent.objects.filter(action="runtime.orphan_remove", data__instance="stray-model").exists()


def test_a_missing_base_image_is_built_by_the_first_deployment_that_needs_it(
    iris_service, member, docker_env, docker_engine, settings
):
    from deployments.runtime.images import image_exists, model_image_tag

    client = docker_engine.client
    base = "portal-modelserver-base:built-by-a-deployment"
    if image_exists(client, base):
        client.images.remove(base)
    version = iris_service.model.versions.get()
    image = model_image_tag(service="iris-api", version=version.version, sha256=version.artifact.sha256)
    if image_exists(client, image):  # a model image is reused, base and all: remove it so the base is needed
        client.images.remove(image, force=True)
    settings.DOCKER_BASE_IMAGE = base
    try:
        deployment = deploy_now(iris_service, member, docker_env, version)
        assert image_exists(client, base)
        messages = list(deployment.events.values_list("message", flat=True))
        assert any(f"The base image {base} is missing: building it" in m for m in messages), messages
        assert any(m.startswith("Base image: built") for m in messages), messages
        assert not any(m.startswith("Base image: Collecting") for m in messages)  # steps, not every line
    finally:
        if image_exists(client, base):
            client.images.remove(base, force=True)
        if image_exists(client, image):
            client.images.remove(image, force=True)
