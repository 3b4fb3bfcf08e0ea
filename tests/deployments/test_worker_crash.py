"""A worker SIGKILLed in the middle of a rollout: a new worker finishes it, with exactly one
live instance, no orphan process, and no step recorded twice; a worker that lost its lease
changes nothing."""

import os
import signal
import time

import pytest

from deployments import rollout, services
from deployments.models import Deployment, DeploymentEvent, Instance, InstanceState, Status
from tests.factories import make_version
from tests.support import running_instances, start_worker, wait_for_status

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_a_rollout_survives_its_worker_being_killed(iris_service, member, environments, redis_url, tmp_path):
    # A model that takes a few seconds to load, so the rollout is surely mid-way when killed.
    slow = tmp_path / "slow_start.py"
    slow.write_text("import time\ntime.sleep(4)\ndef predict(instances):\n    return [0 for _ in instances]\n")
    version = make_version(iris_service.model, slow, version="1.1.0", flavor="pyfunc")
    first = start_worker(redis_url, tmp_path / "worker-1.log", name="first")
    try:
        deployment = services.deployment_request(
            actor=member, service=iris_service, version=version, environment=environments["development"]
        )
        # Wait until the worker has started the instance and is waiting for it to be ready.
        deadline = time.monotonic() + 60
        while not DeploymentEvent.objects.filter(deployment=deployment, step__startswith="start:").exists():
            assert time.monotonic() < deadline, first.log_path.read_text()
            time.sleep(0.05)
        assert Instance.objects.get(deployment=deployment).state == InstanceState.STARTING
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)

    # A new worker, with the periodic reconciler: it sees the abandoned rollout once the
    # dead worker's lease expires, and finishes it.
    second = start_worker(redis_url, tmp_path / "worker-2.log", beat=True, name="second")
    try:
        deployment = wait_for_status(deployment.pk, {Status.LIVE, Status.FAILED}, timeout=90)
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(timeout=30)
    assert deployment.status == Status.LIVE, list(deployment.events.values_list("message", flat=True))
    instances = Instance.objects.filter(deployment=deployment)
    assert instances.count() == 1 and instances.get().state == InstanceState.READY
    assert len(running_instances(f"d{deployment.pk}-r")) == 1  # adopted, not started twice
    steps = list(deployment.events.exclude(step="").values_list("step", flat=True))
    assert len(steps) == len(set(steps))
    assert len([s for s in steps if s.startswith("start:")]) == 1


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
