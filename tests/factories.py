"""Builders for the objects tests need, made through the product's own services.

The one exception is `make_version`, which writes a version row without the load check, for
tests about something else (the check itself is tested through the API).
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

from rest_framework.test import APIClient

from accounts import services as accounts
from accounts.models import User
from deployments import rollout
from deployments import services as deployments
from deployments.models import Deployment
from portal.demo_models import iris_instances
from registry import schemas, semver
from registry.models import Artifact, ModelVersion
from registry.storage import artifact_store

PASSWORD = "correct-horse-battery-9"


def make_user(username: str, **kwargs) -> User:
    password = None if kwargs.get("is_service_account") else kwargs.pop("password", PASSWORD)
    return accounts.user_create(actor=None, username=username, password=password, **kwargs)


def bearer_client(user: User, *, scopes: list[str] | None = None) -> APIClient:
    """An API client that authenticates the way scripts do: with a Bearer token (`.raw_token`)."""
    _, raw = accounts.token_create(actor=None, user=user, name=f"test {secrets.token_hex(4)}", scopes=scopes)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    client.raw_token = raw
    return client


class ModelFile(type(Path())):
    """A path to a trained model file, with the metrics it was evaluated at."""

    metrics: dict[str, float]


def sample(fields=None, count=3) -> str:
    """A sample input as the registration form sends it."""
    return json.dumps({"instances": iris_instances(fields, count)})


def register(client, name: str, path: Path, **fields):
    """POST a version as a multipart form, the way the CLI and the web form do."""
    data = {"version": "1.0.0", "flavor": "sklearn", "sample_input": sample(), **fields}
    data = {k: v for k, v in data.items() if v is not None}
    with open(path, "rb") as handle:
        return client.post(f"/api/v1/models/{name}/versions", {**data, "artifact": handle}, format="multipart")


def make_version(model, path: Path, *, version: str = "1.0.0", actor=None, flavor: str = "sklearn", instances=None):
    """A version row with its artifact stored, without running the load check."""
    staged = artifact_store().stage()
    staged.write(path.read_bytes())
    stored = staged.commit()
    artifact, _ = Artifact.objects.get_or_create(sha256=stored.sha256, defaults={"size": stored.size})
    instances = instances or iris_instances()
    major, minor, patch = semver.parse(version)
    return ModelVersion.objects.create(
        model=model,
        version=version,
        major=major,
        minor=minor,
        patch=patch,
        flavor=flavor,
        artifact=artifact,
        artifact_filename=path.name,
        input_schema=schemas.infer(instances),
        output_schema={"type": "number"},
        input_schema_inferred=True,
        output_schema_inferred=True,
        sample_input=instances,
        sample_output=[0] * len(instances),
        task="classification",
        created_by=actor,
    )


def deploy_now(service, actor, environment, version, *, approver=None, replicas: int = 1) -> Deployment:
    """Request a deployment and carry it out in this process (the rollout engine itself,
    without Celery), for tests about what happens once something is live."""
    deployment = deployments.deployment_request(
        actor=actor, service=service, version=version, environment=environment, replicas=replicas
    )
    if deployment.status == "pending_approval":
        deployments.deployment_approve(actor=approver, deployment=deployment)
    if rollout.rollout(deployment.pk, owner="test") == "busy":
        # A real Celery worker the test also runs took the queued rollout first: let it finish.
        deadline = time.monotonic() + 90
        while deployment.status not in ("live", "failed") and time.monotonic() < deadline:
            time.sleep(0.2)
            deployment.refresh_from_db()
    deployment.refresh_from_db()
    assert deployment.status == "live", list(deployment.events.values_list("message", flat=True))
    return deployment
