"""The S3 artifact store, against a real S3-protocol server over HTTP.

No MinIO binary can be installed on these machines; moto's standalone server (`python -m
moto.server`) speaks the S3 HTTP protocol (multipart uploads, conditional copies, presigned
URLs), so the store is driven through boto3 exactly as it would drive S3 or MinIO. Each test
keeps its objects under a prefix of its own in one bucket of the session.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import uuid

import boto3
import joblib
import numpy as np
import pytest
import requests

from deployments.models import Status
from portal.demo_models import iris_instances, train_iris
from registry import services
from registry.models import Upload
from registry.storage import PartCutShort, artifact_store
from scripts.stack import port_open, stop, wait_until
from tests.factories import ModelFile, register
from tests.ports import port
from tests.support import start_worker, wait_for_status

pytestmark = pytest.mark.django_db

MIB = 1024 * 1024
PART = 5 * MIB  # S3's smallest part (but the last)
BUCKET = "portal-artifacts"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "portal-test", "AWS_SECRET_ACCESS_KEY": "portal-test-secret"}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's standalone S3 server on a port of this worker's, with the session's bucket."""
    listen = port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(listen)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(lambda: port_open(listen) or proc.poll() is not None, 30, "moto's S3 server")
        assert proc.poll() is None, log.read_text()
        url = f"http://127.0.0.1:{listen}"
        boto3.client("s3", endpoint_url=url, region_name="us-east-1", **_lower(CREDENTIALS)).create_bucket(
            Bucket=BUCKET
        )
        yield url
    finally:
        stop(proc)


def _lower(env: dict[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in env.items()}


@pytest.fixture
def s3(s3_server, settings, monkeypatch, tmp_path):
    """The portal configured for S3 (a prefix of this test's own); a boto3 client to look."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    prefix = f"t-{uuid.uuid4().hex[:12]}/"
    settings.ARTIFACT_STORE = "s3"
    settings.ARTIFACT_S3_BUCKET = BUCKET
    settings.ARTIFACT_S3_ENDPOINT_URL = s3_server
    settings.ARTIFACT_S3_REGION = "us-east-1"
    settings.ARTIFACT_S3_PREFIX = prefix
    settings.ARTIFACT_S3_PRESIGNED_DOWNLOADS = False
    settings.ARTIFACT_CACHE_DIR = tmp_path / "cache"
    artifact_store.cache_clear()
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1", **_lower(CREDENTIALS))
    client.prefix = prefix
    yield client
    artifact_store.cache_clear()  # back to the session's filesystem store


def objects(client) -> list[str]:
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=client.prefix).get("Contents", [])
    return sorted(o["Key"].removeprefix(client.prefix) for o in listed)


def multipart_uploads(client) -> list[str]:
    listed = client.list_multipart_uploads(Bucket=BUCKET, Prefix=client.prefix).get("Uploads", [])
    return [u["Key"].removeprefix(client.prefix) for u in listed]


def content_key(sha256: str) -> str:
    return f"sha256/{sha256[:2]}/{sha256}"


@pytest.fixture(scope="session")
def big_iris_file(tmp_path_factory) -> ModelFile:
    """A real iris model of about 12 MiB (random padding kept on the estimator): three S3
    parts of 5 MiB, the last one short."""
    path = ModelFile(tmp_path_factory.mktemp("big-model") / "iris.joblib")
    train_iris(path)
    model = joblib.load(path)
    model.padding_ = np.random.default_rng(13).integers(0, 256, size=12 * MIB, dtype=np.uint8)
    joblib.dump(model, path)
    return path


def start(client, content: bytes, *, sha256: bool = True, chunk_size: int = PART):
    body = {"size": len(content), "filename": "iris.joblib", "chunk_size": chunk_size}
    if sha256:
        body["sha256"] = hashlib.sha256(content).hexdigest()
    return client.post("/api/v1/uploads", body, format="json")


def put(client, upload: dict, content: bytes, number: int, *, body: bytes | None = None):
    first = number * upload["chunk_size"]
    last = min(first + upload["chunk_size"], len(content))
    return client.generic(
        "PUT",
        upload["url"],
        content[first:last] if body is None else body,
        content_type="application/octet-stream",
        HTTP_CONTENT_RANGE=f"bytes {first}-{last - 1}/{len(content)}",
    )


def send_parts(client, upload: dict, content: bytes, order):
    for number in order:
        answer = put(client, upload, content, number)
        assert answer.status_code == 200, answer.content


def register_upload(client, upload_id: str, version: str):
    body = {"upload": upload_id, "version": version, "flavor": "sklearn", "sample_input": iris_instances()}
    return client.post("/api/v1/models/iris/versions", body, format="json")


def test_parts_out_of_order_become_one_object_stored_once_under_its_digest(s3, api, member, iris_model, big_iris_file):
    client = api(member)
    content = big_iris_file.read_bytes()
    digest = hashlib.sha256(content).hexdigest()
    upload = start(client, content, sha256=False).json()
    assert upload["chunk_size"] == PART and multipart_uploads(s3) == [f"uploads/{upload['id'].replace('-', '')}"]

    send_parts(client, upload, content, [2, 0])
    state = client.get(upload["url"]).json()
    assert state["missing"] == [[PART, 2 * PART - 1]] and state["received"] == len(content) - PART
    # A part that arrived is never written again: different bytes for part 0 are dropped.
    assert put(client, upload, content, 0, body=bytes(PART)).status_code == 200
    send_parts(client, upload, content, [1])
    done = client.post(f"{upload['url']}/complete", {"sha256": digest}, format="json")
    assert done.status_code == 200 and done.json()["status"] == "complete", done.content
    assert multipart_uploads(s3) == []  # assembled into the upload's object

    registered = register_upload(client, upload["id"], "1.0.0")
    assert registered.status_code == 201, registered.content
    assert registered.json()["sha256"] == digest and registered.json()["size"] == len(content)
    assert objects(s3) == [content_key(digest)]  # the upload's object moved to the content address
    stored = s3.get_object(Bucket=BUCKET, Key=s3.prefix + content_key(digest))["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == digest

    # The same bytes again, sent in full (no digest up front), then by the single-request
    # registration: still one object.
    again = start(client, content, sha256=False).json()
    send_parts(client, again, content, [1, 2, 0])
    assert client.post(f"{again['url']}/complete", {"sha256": digest}, format="json").json()["status"] == "complete"
    assert register_upload(client, again["id"], "1.0.1").status_code == 201
    assert register(client, "iris", big_iris_file, version="1.0.2").status_code == 201
    assert objects(s3) == [content_key(digest)] and multipart_uploads(s3) == []
    assert list(artifact_store().staging_dir.iterdir()) == []  # local copies for the check are gone


def test_a_wrong_digest_discards_the_upload(s3, api, member, iris_model, big_iris_file):
    client = api(member)
    content = big_iris_file.read_bytes()
    upload = start(client, content, sha256=False).json()
    send_parts(client, upload, content, [0, 1, 2])
    wrong = hashlib.sha256(b"another file").hexdigest()
    refused = client.post(f"{upload['url']}/complete", {"sha256": wrong}, format="json")
    assert refused.status_code == 400 and "discarded" in refused.json()["detail"]
    assert objects(s3) == [] and multipart_uploads(s3) == []
    assert not Upload.objects.exists()


def test_finishing_early_names_the_missing_parts(s3, api, member, iris_model, big_iris_file):
    client = api(member)
    content = big_iris_file.read_bytes()
    upload = start(client, content).json()
    send_parts(client, upload, content, [0, 2])
    early = client.post(f"{upload['url']}/complete", {}, format="json")
    assert early.status_code == 409 and early.json()["missing"] == [[PART, 2 * PART - 1]]
    assert len(multipart_uploads(s3)) == 1


def test_abort_drops_the_multipart_upload(
    s3, api, member, iris_model, big_iris_file, django_capture_on_commit_callbacks
):
    client = api(member)
    content = big_iris_file.read_bytes()
    upload = start(client, content).json()
    send_parts(client, upload, content, [1])
    assert len(multipart_uploads(s3)) == 1
    with django_capture_on_commit_callbacks(execute=True):
        assert client.delete(upload["url"]).status_code == 204
    assert multipart_uploads(s3) == [] and objects(s3) == []


def test_parts_under_five_mib_are_refused_up_front(s3, api, member, iris_model, big_iris_file):
    answer = start(api(member), big_iris_file.read_bytes(), chunk_size=MIB)
    assert answer.status_code == 400 and str(PART) in answer.json()["detail"]


def test_a_part_cut_short_is_not_sent_to_s3(s3, api, member, iris_model, big_iris_file):
    client = api(member)
    content = big_iris_file.read_bytes()
    upload = start(client, content).json()
    row = Upload.objects.get()
    store = artifact_store().resumable(row.key, size=row.size, part_size=row.part_size)
    with pytest.raises(PartCutShort):
        store.put_part(number=0, chunks=iter([content[:MIB], content[MIB : 2 * MIB]]))
    assert store.parts().received == (False, False, False)
    assert store.put_part(number=0, chunks=iter([content[:PART]])) is True
    assert store.put_part(number=0, chunks=iter([content[:PART]])) is False  # there already
    assert client.get(upload["url"]).json()["received"] == PART


def test_orphaned_multipart_uploads_are_swept(s3, api, member, iris_model, big_iris_file):
    client = api(member)
    content = big_iris_file.read_bytes()
    kept = start(client, content).json()
    orphan = uuid.uuid4().hex
    artifact_store().resumable(orphan, size=len(content), part_size=PART).create()
    assert artifact_store().uploads_present() == {orphan, kept["id"].replace("-", "")}
    # A grace in the past: every upload without a row is old enough to go.
    assert services.upload_cleanup(orphan_grace_seconds=-60) == 1
    assert multipart_uploads(s3) == [f"uploads/{kept['id'].replace('-', '')}"]


def test_downloads_stream_from_s3_or_redirect_to_a_presigned_url(s3, api, member, iris_model, big_iris_file, settings):
    client = api(member)
    content = big_iris_file.read_bytes()
    assert register(client, "iris", big_iris_file).status_code == 201
    url = "/api/v1/models/iris/versions/1.0.0/artifact"

    streamed = client.get(url)
    assert streamed.status_code == 200 and streamed["ETag"] == f'"{hashlib.sha256(content).hexdigest()}"'
    assert b"".join(streamed.streaming_content) == content

    settings.ARTIFACT_S3_PRESIGNED_DOWNLOADS = True
    artifact_store.cache_clear()
    redirected = client.get(url)
    assert redirected.status_code == 302 and redirected["Location"].startswith(settings.ARTIFACT_S3_ENDPOINT_URL)
    answer = requests.get(redirected["Location"], timeout=30)  # no portal token: the URL is the key
    assert answer.status_code == 200 and answer.content == content
    assert 'filename="iris.joblib"' in answer.headers["Content-Disposition"]


def test_local_path_fetches_the_content_once_into_the_cache(s3, api, member, iris_model, big_iris_file):
    content = big_iris_file.read_bytes()
    digest = hashlib.sha256(content).hexdigest()
    assert register(api(member), "iris", big_iris_file).status_code == 201
    store = artifact_store()
    cached = store.local_path(digest)
    assert cached.read_bytes() == content  # kept from the registration's own staged copy
    cached.unlink()
    fetched = store.local_path(digest)
    assert fetched == cached and fetched.read_bytes() == content
    assert store.local_path(digest).stat().st_ino == fetched.stat().st_ino  # not fetched again
    store.delete(digest)
    assert not store.exists(digest) and not cached.exists() and objects(s3) == []
    with pytest.raises(FileNotFoundError):
        store.local_path(digest)


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_model_server_on_another_machine_loads_the_artifact_from_s3(
    s3, api, member, team, environments, redis_url, tmp_path, settings
):
    """A worker with a cache of its own (as on another host) deploys a version registered into
    S3: its `local` model server loads the file fetched from the bucket, and goes live."""
    client = api(member)
    big = tmp_path / "iris.joblib"
    assert client.post("/api/v1/models", {"name": "iris", "team": team.name}, format="json").status_code == 201
    train_iris(big)
    assert register(client, "iris", big).status_code == 201
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    service = {"name": "iris-api", "team": team.name, "model": "iris"}
    assert client.post("/api/v1/services", service, format="json").status_code == 201

    elsewhere = tmp_path / "worker-cache"
    s3_env = {
        "ARTIFACT_STORE": "s3",
        "ARTIFACT_S3_BUCKET": BUCKET,
        "ARTIFACT_S3_ENDPOINT_URL": settings.ARTIFACT_S3_ENDPOINT_URL,
        "ARTIFACT_S3_REGION": "us-east-1",
        "ARTIFACT_S3_PREFIX": s3.prefix,
        "ARTIFACT_CACHE_DIR": str(elsewhere),
        **CREDENTIALS,
    }
    worker = start_worker(redis_url, tmp_path / "worker.log", name="s3", env=s3_env)
    try:
        answer = client.post(
            "/api/v1/services/iris-api/deployments", {"version": "1.0.0", "environment": "development"}, format="json"
        )
        assert answer.status_code == 201, answer.content
        deployment = wait_for_status(answer.json()["id"], {Status.LIVE, Status.FAILED})
        assert deployment.status == Status.LIVE, list(deployment.events.values_list("message", flat=True))
    finally:
        stop(worker)
    assert (elsewhere / "sha256" / digest[:2] / digest).read_bytes() == big.read_bytes()


def test_a_refused_registration_keeps_the_upload_and_drops_the_local_copy(s3, api, member, iris_model, big_iris_file):
    client = api(member)
    content = big_iris_file.read_bytes()
    upload = start(client, content).json()
    send_parts(client, upload, content, [0, 1, 2])
    assert client.post(f"{upload['url']}/complete", {}, format="json").json()["status"] == "complete"
    refused = register_upload(client, upload["id"], "not-a-version")
    assert refused.status_code == 400, refused.content
    wrong_input = {"upload": upload["id"], "version": "1.0.0", "flavor": "sklearn", "sample_input": [{"a": "b"}]}
    assert client.post("/api/v1/models/iris/versions", wrong_input, format="json").status_code == 400
    assert list(artifact_store().staging_dir.iterdir()) == []  # the check's copy is gone
    assert objects(s3) == [f"uploads/{upload['id'].replace('-', '')}"]  # the upload is not
    assert register_upload(client, upload["id"], "1.0.0").status_code == 201
    assert objects(s3) == [content_key(hashlib.sha256(content).hexdigest())]
