"""Registering models and versions through the REST API."""

import hashlib
import json

import pytest
from django.test import Client

from accounts.models import AuditEvent
from portal.demo_models import IRIS_FIELDS, iris_instances, linear_onnx, train_iris
from registry.models import Artifact, ModelVersion
from registry.storage import artifact_store
from tests.factories import register, sample

pytestmark = pytest.mark.django_db


def test_create_model_and_find_it(api, team, member, viewer):
    response = api(member).post(
        "/api/v1/models", {"name": "churn", "team": "vision", "description": "x"}, format="json"
    )
    assert response.status_code == 201, response.content
    assert response.json()["team"] == "vision" and response.json()["versions"] == []
    listed = api(viewer).get("/api/v1/models?search=chur").json()
    assert [m["name"] for m in listed["results"]] == ["churn"]
    assert api(viewer).get("/api/v1/models?team=other").json()["count"] == 0
    assert AuditEvent.objects.filter(action="model.create", target_repr="churn").exists()


def test_register_a_version_infers_schemas_and_checks_the_model(api, member, iris_model, iris_file):
    response = register(
        api(member),
        "iris",
        iris_file,
        metrics=json.dumps(iris_file.metrics),
        git_commit="abc1234",
        data_ref="sklearn:iris",
        parameters=json.dumps({"C": 1.0}),
        description="# Iris\nA *logistic* regression.",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    digest = hashlib.sha256(iris_file.read_bytes()).hexdigest()
    assert body["sha256"] == digest and body["size"] == iris_file.stat().st_size
    assert body["input_schema"]["required"] == IRIS_FIELDS
    assert body["input_schema_inferred"] and body["output_schema"] == {"type": "number"}
    assert body["sample_output"] == [0, 1, 2]
    assert body["lineage"] == {"git_commit": "abc1234", "data_ref": "sklearn:iris", "parameters": {"C": 1.0}}
    assert body["metrics"] == iris_file.metrics
    assert artifact_store().exists(digest)
    event = AuditEvent.objects.get(action="model_version.register")
    assert event.actor == member and event.data["sha256"] == digest and event.team_name == "vision"


def test_download_streams_the_bytes_with_the_sha256_as_etag(api, member, viewer, iris_model, iris_file):
    register(api(member), "iris", iris_file)
    client = api(viewer)
    response = client.get("/api/v1/models/iris/versions/1.0.0/artifact")
    assert response.status_code == 200 and response.streaming
    content = b"".join(response.streaming_content)
    assert content == iris_file.read_bytes()
    digest = hashlib.sha256(content).hexdigest()
    assert response["ETag"] == f'"{digest}"'
    assert response["Content-Length"] == str(len(content))
    assert "iris.joblib" in response["Content-Disposition"]
    again = client.get("/api/v1/models/iris/versions/1.0.0/artifact", HTTP_IF_NONE_MATCH=f'"{digest}"')
    assert again.status_code == 304


def test_identical_content_is_stored_once(api, member, iris_model, iris_file):
    client = api(member)
    assert register(client, "iris", iris_file).status_code == 201
    assert register(client, "iris", iris_file, version="1.0.1").status_code == 201
    assert Artifact.objects.count() == 1
    digest = Artifact.objects.get().sha256
    assert ModelVersion.objects.filter(artifact__sha256=digest).count() == 2
    files = [p for p in (artifact_store().root / "sha256").rglob("*") if p.is_file() and p.name == digest]
    assert len(files) == 1


def test_the_client_may_send_the_expected_sha256(api, member, iris_model, iris_file):
    digest = hashlib.sha256(iris_file.read_bytes()).hexdigest()
    assert register(api(member), "iris", iris_file, sha256=digest.upper()).status_code == 201


def test_onnx_flavor(api, member, iris_model, tmp_path):
    path = tmp_path / "linear.onnx"
    linear_onnx(path, weights=[0.5, 0.25, 1.0, 2.0])
    response = register(api(member), "iris", path, flavor="onnx")
    assert response.status_code == 201, response.content
    assert response.json()["output_schema"]["type"] == "array"


def test_pyfunc_flavor(api, member, iris_model, tmp_path):
    path = tmp_path / "rule.py"
    path.write_text(
        "def predict(instances):\n    return ['big' if i['petal_length'] > 3 else 'small' for i in instances]\n"
    )
    response = register(api(member), "iris", path, flavor="pyfunc")
    assert response.status_code == 201, response.content
    assert response.json()["sample_output"] == ["small", "big", "big"]
    assert response.json()["output_schema"] == {"type": "string"}


def test_declared_schemas_are_kept(api, member, iris_model, iris_file):
    schema = {
        "type": "object",
        "properties": {f: {"type": "number", "minimum": 0} for f in IRIS_FIELDS},
        "required": IRIS_FIELDS,
    }
    response = register(
        api(member),
        "iris",
        iris_file,
        input_schema=json.dumps(schema),
        output_schema=json.dumps({"type": "integer", "enum": [0, 1, 2]}),
    )
    assert response.status_code == 201, response.content
    assert response.json()["input_schema"] == schema and not response.json()["input_schema_inferred"]


def test_sample_input_as_a_json_file_part(api, member, iris_model, iris_file, tmp_path):
    sample_file = tmp_path / "sample.json"
    sample_file.write_text(sample())
    client = api(member)
    with open(iris_file, "rb") as artifact, open(sample_file, "rb") as sample_part:
        response = client.post(
            "/api/v1/models/iris/versions",
            {"version": "1.0.0", "flavor": "sklearn", "artifact": artifact, "sample_input": sample_part},
            format="multipart",
        )
    assert response.status_code == 201, response.content


def test_compatible_change_in_the_same_major(api, member, iris_model, iris_file, tmp_path):
    client = api(member)
    register(client, "iris", iris_file)
    # An extra optional field is compatible: declared schema with a new optional property.
    schema = {
        "type": "object",
        "properties": {**{f: {"type": "number"} for f in IRIS_FIELDS}, "source": {"type": "string"}},
        "required": IRIS_FIELDS,
    }
    response = register(client, "iris", iris_file, version="1.1.0", input_schema=json.dumps(schema))
    assert response.status_code == 201, response.content
    changes = response.json()["changes"]
    assert changes == [
        {"side": "input", "path": "source", "message": "New optional input field `source`.", "breaking": False}
    ]
    assert response.json()["previous_version"] == "1.0.0"


def test_breaking_change_needs_a_new_major(api, member, iris_model, iris_file, tmp_path):
    client = api(member)
    register(client, "iris", iris_file)
    renamed = ["sepal_length_cm", *IRIS_FIELDS[1:]]
    v2 = tmp_path / "iris2.joblib"
    train_iris(v2, C=0.5)
    response = register(client, "iris", v2, version="1.1.0", sample_input=sample(renamed))
    assert response.status_code == 409
    body = response.json()
    assert body["compared_with"] == "1.0.0" and "2.0.0" in body["detail"]
    messages = [c["message"] for c in body["breaking_changes"]]
    assert "Input field `sepal_length` was removed. It may have been renamed to `sepal_length_cm`." in messages
    assert "New required input field `sepal_length_cm`: every caller must now send it." in messages
    assert ModelVersion.objects.count() == 1

    response = register(client, "iris", v2, version="2.0.0", sample_input=sample(renamed))
    assert response.status_code == 201, response.content
    assert [c["breaking"] for c in response.json()["changes"]] == [True, True]


def test_patches_to_an_older_major_are_allowed(api, member, iris_model, iris_file):
    client = api(member)
    register(client, "iris", iris_file)
    register(client, "iris", iris_file, version="2.0.0")
    assert register(client, "iris", iris_file, version="1.0.1").status_code == 201
    response = register(client, "iris", iris_file, version="0.9.0")
    assert response.status_code == 409 and "New majors must increase" in response.json()["detail"]


def test_version_list_and_detail(api, member, viewer, iris_model, iris_file):
    client = api(member)
    register(client, "iris", iris_file, metrics=json.dumps({"accuracy": 0.9}))
    register(client, "iris", iris_file, version="1.2.0", metrics=json.dumps({"accuracy": 0.95}))
    versions = api(viewer).get("/api/v1/models/iris/versions").json()["results"]
    assert [v["version"] for v in versions] == ["1.2.0", "1.0.0"]
    detail = api(viewer).get("/api/v1/models/iris").json()
    assert detail["latest_version"] == "1.2.0" and len(detail["versions"]) == 2
    assert api(viewer).get("/api/v1/models/iris/versions/1.2.0").json()["metrics"] == {"accuracy": 0.95}
    assert api(viewer).get("/api/v1/models/iris/versions/9.9.9").status_code == 404
    assert api(viewer).get("/api/v1/models/iris/versions/latest").status_code == 404


def test_model_list_query_count_is_constant(api, owner, team, django_assert_max_num_queries):
    from registry import services

    for i in range(12):
        services.registered_model_create(actor=owner, name=f"m-{i}", team=team)
    client = api(owner)
    with django_assert_max_num_queries(10):
        assert client.get("/api/v1/models").json()["count"] == 12


def test_iris_instances_helper_is_real_data():
    assert iris_instances()[0] == {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def test_abandoned_staging_files_are_cleaned_up(db):
    import os
    import time

    from registry.services import artifact_staging_cleanup

    store = artifact_store()
    old = store.staging_dir / "abandoned.part"
    fresh = store.staging_dir / "in-flight.part"
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (two_days_ago, two_days_ago))
    assert artifact_staging_cleanup(older_than_seconds=24 * 3600) == 1
    assert not old.exists() and fresh.exists()
    fresh.unlink()


def test_boolean_subschemas_are_understood(api, member, iris_model, iris_file):
    schema = json.dumps({"type": "object", "properties": dict.fromkeys(IRIS_FIELDS, True), "required": IRIS_FIELDS})
    client = api(member)
    assert register(client, "iris", iris_file, input_schema=schema).status_code == 201
    response = register(client, "iris", iris_file, version="1.1.0", input_schema=schema)
    assert response.status_code == 201, response.content
    assert response.json()["changes"] == []


def test_a_model_that_prints_is_still_checked(api, member, iris_model, tmp_path):
    path = tmp_path / "chatty.py"
    path.write_text(
        "print('loading')\ndef predict(instances):\n    print('predicting')\n    return [1 for _ in instances]\n"
    )
    response = register(api(member), "iris", path, flavor="pyfunc")
    assert response.status_code == 201, response.content


def test_a_person_may_hold_at_most_their_quota_of_artifacts(api, member, iris_model, iris_file, tmp_path, settings):
    size = iris_file.stat().st_size
    settings.ARTIFACT_QUOTA_BYTES = size + 100
    client = api(member)
    assert register(client, "iris", iris_file).status_code == 201
    # The same file again adds nothing to what the person holds.
    assert register(client, "iris", iris_file, version="1.0.1").status_code == 201
    other = tmp_path / "other.py"
    other.write_text("def predict(instances):\n    return [0 for _ in instances]\n" + "#" * 200)
    refused = register(client, "iris", other, version="1.0.2", flavor="pyfunc")
    assert refused.status_code == 413, refused.content
    body = refused.json()
    assert "quota" in body["detail"] and "ARTIFACT_QUOTA_BYTES" in body["detail"] and body["used"] == size
    assert not ModelVersion.objects.filter(version="1.0.2").exists()
    # A resumable upload is refused before a byte is sent.
    early = client.post("/api/v1/uploads", {"size": 10_000}, format="json")
    assert early.status_code == 413 and "quota" in early.json()["detail"]
    # The register page says how much is used.
    page = Client()
    page.force_login(member)
    assert "of your" in page.get("/models/iris/versions/new").content.decode()
