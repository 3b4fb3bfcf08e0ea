"""The provisioning event says beside which live version the new instances start, and
does not speak of a live one when nothing is live."""

import pytest

from deployments import rollout, services
from deployments.models import Deployment, Status
from tests.factories import make_version

pytestmark = pytest.mark.django_db


def request(service, actor, environment, version, replicas=1) -> Deployment:
    return services.deployment_request(
        actor=actor, service=service, version=version, environment=environment, replicas=replicas
    )


def test_the_first_deployment_says_nothing_is_live_yet(iris_service, owner, environments, iris_file):
    v1 = iris_service.model.versions.get()
    first = request(iris_service, owner, environments["staging"], v1)
    assert rollout._starting_message(first) == "Starting 1 instance of 1.0.0 (nothing is live yet)."

    Deployment.objects.filter(pk=first.pk).update(status=Status.LIVE)
    v11 = make_version(iris_service.model, iris_file, version="1.1.0")
    second = request(iris_service, owner, environments["staging"], v11, replicas=2)
    assert rollout._starting_message(second) == "Starting 2 instances of 1.1.0 beside the live one (1.0.0)."
    # Another major, or another environment, has nothing live of its own yet.
    v2 = make_version(iris_service.model, iris_file, version="2.0.0")
    assert "(nothing is live yet)" in rollout._starting_message(
        request(iris_service, owner, environments["staging"], v2)
    )
    assert "(nothing is live yet)" in rollout._starting_message(
        request(iris_service, owner, environments["development"], v11)
    )
