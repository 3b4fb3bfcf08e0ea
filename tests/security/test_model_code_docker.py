"""Hostile model code served by the docker runtime: a container with no network, answering
on a socket in a directory of its own, reaches nothing of this machine."""

from __future__ import annotations

import secrets
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from deployments import services
from deployments.models import Instance
from portal.demo_models import iris_instances
from registry import services as registry
from registry.storage import artifact_store
from tests.factories import bearer_client, deploy_now, make_version
from tests.security.hostile import Targets, pyfunc
from tests.support import call, eventually

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]


def test_a_hostile_model_in_a_container_reaches_nothing(
    iris_service, owner, team, service_account, docker_env, gateway, redis_url, tmp_path, monkeypatch
):
    canary = f"canary-{secrets.token_hex(8)}"
    monkeypatch.setenv("PORTAL_SECURITY_CANARY", canary)
    iris = deploy_now(iris_service, owner, docker_env, iris_service.model.versions.get())
    iris_socket = Instance.objects.get(deployment=iris).url.removeprefix("unix:")
    secret = Path(settings.ARTIFACT_ROOT).parent / "secret_key"
    secret.write_text(secrets.token_urlsafe(32))
    marker = uuid.uuid4().hex
    targets = Targets(
        canary=canary,
        portal_pid=gateway.pid,
        read={
            "secret_key": str(secret),
            "other_artifact": str(artifact_store().local_path(iris_service.model.versions.get().artifact.sha256)),
        },
        list={"artifact_store": str(settings.ARTIFACT_ROOT)},
        tcp={"redis": int(redis_url.rsplit(":", 1)[1].split("/")[0]), "gateway": gateway.port},
        unix={"other_model_server": iris_socket},
        write={"tmp_of_the_machine": str(tmp_path / f"written-{marker}")},
    )
    model = registry.registered_model_create(actor=owner, name="hostile", team=team)
    version = make_version(model, pyfunc(tmp_path / "model.py", targets), actor=owner, flavor="pyfunc", instances=[[1]])
    service = services.service_create(actor=owner, name="hostile", team=team, model=model)
    services.grant_create(actor=owner, service=service, user=service_account)
    deploy_now(service, owner, docker_env, version)
    consumer = bearer_client(service_account, scopes=["invoke"]).raw_token

    url = f"{gateway.url}/serve/development/hostile/v1/predict"
    code, answer, _ = eventually(lambda: (r := call(url, token=consumer, body={"instances": [[2]]}))[0] != 401 and r)
    assert code == 200, answer
    report = answer["predictions"][0]
    assert set(report.values()) == {"blocked"}, report
    assert not any(Path(p).exists() for p in targets.write.values())
    services.grant_create(actor=owner, service=iris_service, user=service_account)
    iris_url = f"{gateway.url}/serve/development/iris-api/v1/predict"
    code, answer, _ = eventually(
        lambda: (r := call(iris_url, token=consumer, body={"instances": iris_instances()}))[0] != 403 and r
    )
    assert code == 200 and answer["predictions"] == [0, 1, 2]
