from __future__ import annotations

import json
from pathlib import Path

import pytest

from portal.demo_models import iris_instances
from registry import services


@pytest.fixture
def iris_model(team, owner):
    return services.registered_model_create(actor=owner, name="iris", team=team, description="Iris **species**.")


def sample(fields=None, count=3) -> str:
    return json.dumps({"instances": iris_instances(fields, count)})


def register(client, name: str, path: Path, **fields):
    """POST a version as a multipart form, the way the CLI and the web form do."""
    data = {"version": "1.0.0", "flavor": "sklearn", "sample_input": sample(), **fields}
    data = {k: v for k, v in data.items() if v is not None}
    with open(path, "rb") as handle:
        return client.post(f"/api/v1/models/{name}/versions", {**data, "artifact": handle}, format="multipart")


def make_version(model, path: Path, *, version: str = "1.0.0", actor=None, flavor: str = "sklearn", instances=None):
    """A version row with its artifact stored, without running the load check (a factory for
    tests about something else: the check itself is tested through the API)."""
    from registry import schemas, semver
    from registry.models import Artifact, ModelVersion
    from registry.storage import artifact_store

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
        created_by=actor,
    )
