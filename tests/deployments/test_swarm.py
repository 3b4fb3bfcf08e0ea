"""The swarm runtime against a real single-node Docker Swarm and a real image registry.

The swarm is the test engine's own (`docker swarm init` on it, left again afterwards if this
module made it); the registry is Debian's `docker-registry` (the Docker distribution registry),
started on a port of 127.0.0.1 with its storage in a temporary directory (dockerd pushes to
127.0.0.0/8 registries over plain HTTP by default). Without an engine these tests skip, like
the docker ones; without the registry package too (make test installs it).
"""

import json
import os
import shutil
import subprocess
import urllib.request

import pytest

from deployments import rollout, services
from deployments.models import Deployment, Instance, Status
from deployments.runtime.swarm import LABEL, SwarmBackend
from portal.demo_models import iris_instances
from scripts.stack import spawn, stop, wait_until
from tests.factories import bearer_client, deploy_now, make_version
from tests.ports import port
from tests.support import call, eventually

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]

# Marks a swarm this module made, so a later run leaves it even if this one died before it could.
MADE_HERE = "portal.test-swarm"
NODE_TIER = "portal-test-tier"


@pytest.fixture(scope="module")
def swarm(docker_engine):
    client = docker_engine.client
    made = client.info()["Swarm"].get("LocalNodeState") != "active"
    if made:
        client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
    node = client.nodes.list(filters={"role": "manager"})[0]
    spec = node.attrs["Spec"]
    labels = spec.get("Labels") or {}
    made = made or labels.get(MADE_HERE) == "1"
    # A label the environment's placement can ask for.
    node.update({**spec, "Labels": {**labels, NODE_TIER: "models", **({MADE_HERE: "1"} if made else {})}})
    backend = SwarmBackend.default()
    yield backend
    for name in backend.list():
        backend.stop(name, drain_seconds=1)
    if made:
        client.swarm.leave(force=True)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A real Docker distribution registry on 127.0.0.1: its host:port."""
    binary = shutil.which("docker-registry") or (
        "/usr/bin/docker-registry" if os.path.exists("/usr/bin/docker-registry") else None
    )
    if binary is None:
        reason = "The image registry is not installed (apt-get install docker-registry; make test does it as root)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("registry")
    address = f"127.0.0.1:{port()}"
    config = work / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {work / 'storage'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: {address}\n"
    )
    log = (work / "registry.log").open("wb")
    proc = spawn([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    wait_until(lambda: proc.poll() is not None or _get_json(f"http://{address}/v2/") is not None, 15, "registry")
    assert proc.poll() is None, (work / "registry.log").read_text()
    yield address
    stop(proc)
    log.close()


def _get_json(url: str):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - a test URL on 127.0.0.1
            return json.loads(response.read() or b"{}")
    except (OSError, ValueError):
        return None


@pytest.fixture
def swarm_env(environments, swarm, registry, settings):
    settings.DOCKER_REGISTRY = registry
    development = environments["development"]
    development.runtime = "swarm"
    development.memory_mb = 512
    development.cpus = 1
    development.placement = [f"node.labels.{NODE_TIER}==models"]
    development.save()
    yield development
    for name in swarm.list():  # the next test starts with no services
        swarm.stop(name, drain_seconds=1)


@pytest.fixture
def consumer(iris_service, owner, service_account):
    services.grant_create(actor=owner, service=iris_service, user=service_account)
    return bearer_client(service_account, scopes=["invoke"]).raw_token


def test_a_deployment_pushes_its_image_runs_as_a_swarm_service_and_answers_through_the_gateway(
    iris_service, member, swarm_env, swarm, registry, gateway, consumer
):
    version = iris_service.model.versions.get()
    deployment = deploy_now(iris_service, member, swarm_env, version)
    instance = Instance.objects.get(deployment=deployment)
    assert instance.backend == "swarm" and instance.url.startswith("http://127.0.0.1:3")

    url = f"{gateway.url}/serve/development/iris-api/v1/predict"
    _code, payload, _ = eventually(
        lambda: (r := call(url, token=consumer, body={"instances": iris_instances()}))[0] == 200 and r
    )
    assert payload["predictions"] == [0, 1, 2]

    # The image went to the registry, and the service names it there.
    tags = _get_json(f"http://{registry}/v2/portal-model/iris-api/tags/list")
    assert tags and any(t.startswith(f"{version.version}-{version.artifact.sha256[:12]}-") for t in tags["tags"])
    messages = " ".join(deployment.events.values_list("message", flat=True))
    assert f"Pushing {registry}/portal-model/iris-api:" in messages and f"Pushed {registry}/" in messages

    service = swarm.client.services.get(instance.name)
    spec = service.attrs["Spec"]
    task = spec["TaskTemplate"]
    container = task["ContainerSpec"]
    assert container["Image"].startswith(f"{registry}/portal-model/iris-api:{version.version}-")
    assert container["ReadOnly"] and container["CapabilityDrop"] == ["ALL"] and container["User"] == "65534:65534"
    assert container["Healthcheck"]["Test"] == ["CMD", "python", "-m", "modelserver.health"]
    assert container["StopGracePeriod"] == 10 * 1_000_000_000  # RUNTIME_DRAIN_SECONDS
    assert task["Resources"]["Limits"] == {"NanoCPUs": 1_000_000_000, "MemoryBytes": 512 * 1024 * 1024, "Pids": 256}
    assert task["Resources"]["Reservations"] == {"NanoCPUs": 250_000_000, "MemoryBytes": 512 * 1024 * 1024}
    assert task["Placement"]["Constraints"] == [f"node.labels.{NODE_TIER}==models"]
    assert task["RestartPolicy"]["Condition"] == "on-failure"
    assert spec["Labels"][LABEL] == instance.name and spec["Labels"]["portal.deployment"] == str(deployment.pk)
    [published] = spec["EndpointSpec"]["Ports"]
    assert published["PublishMode"] == "host" and instance.url == f"http://127.0.0.1:{published['PublishedPort']}"
    # Its task's container: healthy, and no `portal.instance` label the docker backend would reap.
    [running] = swarm.client.containers.list(filters={"label": f"com.docker.swarm.service.name={instance.name}"})
    assert eventually(lambda: (running.reload(), running.attrs["State"]["Health"]["Status"])[1] == "healthy", 30)
    assert LABEL not in running.labels and running.attrs["HostConfig"]["ReadonlyRootfs"]

    # Its log is the service's, on the deployment page too.
    assert "loaded sklearn model" in swarm.logs(instance.name)
    from django.test import Client

    client = Client()
    client.force_login(member)
    assert "loaded sklearn model" in client.get(f"/deployments/{deployment.pk}/").content.decode()

    # Stopping drains the task and removes the service.
    swarm.stop(instance.name, drain_seconds=5)
    assert instance.name not in swarm.list()
    assert not swarm.status(instance.name).running


def test_replicas_are_services_and_a_version_no_node_may_run_fails_leaving_the_old_one_serving(
    iris_service, member, swarm_env, swarm, gateway, consumer, iris_file
):
    v1 = iris_service.model.versions.get()
    first = deploy_now(iris_service, member, swarm_env, v1, replicas=2)
    names = sorted(Instance.objects.filter(deployment=first).values_list("name", flat=True))
    assert len(names) == 2 and sorted(n for n in swarm.list() if n.startswith(f"d{first.pk}-")) == names
    assert len({Instance.objects.get(name=n).url for n in names}) == 2  # a port each

    url = f"{gateway.url}/serve/development/iris-api/v1/predict"
    assert eventually(lambda: call(url, token=consumer, body={"instances": iris_instances(count=1)})[0] == 200)

    # An environment asking for nodes nobody has: the new version cannot be placed.
    swarm_env.placement = ["node.labels.tier==nowhere"]
    swarm_env.save()
    v2 = make_version(iris_service.model, iris_file, version="1.1.0")
    second = services.deployment_request(actor=member, service=iris_service, version=v2, environment=swarm_env)
    rollout.rollout(second.pk, owner="test")
    second.refresh_from_db()
    assert second.status == Status.FAILED
    failure = second.events.get(to_status=Status.FAILED).message
    assert "The swarm cannot place it: no suitable node" in failure and "node.labels.tier==nowhere" in failure
    assert "The previous version keeps serving" in failure
    # Nothing of it is left in the swarm; the old version is live and answers, from both replicas.
    assert not [n for n in swarm.list() if n.startswith(f"d{second.pk}-")]
    assert Deployment.objects.get(pk=first.pk).status == Status.LIVE
    for _ in range(4):
        code, payload, _ = call(url, token=consumer, body={"instances": iris_instances(count=1)})
        assert code == 200 and payload["model_version"] == v1.version
    assert all(swarm.status(name).running for name in names)


def test_the_reconciler_restarts_an_instance_whose_service_is_gone_and_removes_strays(
    iris_service, member, swarm_env, swarm, settings
):
    deployment = deploy_now(iris_service, member, swarm_env, iris_service.model.versions.get())
    instance = Instance.objects.get(deployment=deployment)
    image = swarm.client.services.get(instance.name).attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
    swarm.client.services.get(instance.name).remove()
    assert eventually(lambda: not swarm.status(instance.name).running)
    assert f"restarted {instance.name}" in rollout.supervise()
    assert eventually(lambda: swarm.status(instance.name).running, 30)
    # A labelled service no deployment owns is removed once its grace period is over.
    settings.DOCKER_ORPHAN_GRACE_SECONDS = 0
    swarm.client.services.create(image, name="stray-model", labels={LABEL: "stray-model"})
    assert "removed orphan stray-model" in rollout.supervise()
    assert "stray-model" not in swarm.list()
