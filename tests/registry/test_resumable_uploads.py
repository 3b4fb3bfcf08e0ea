"""The resumable upload protocol: parts in any order, the digest check, registration by id."""

import hashlib
from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import AuditEvent
from portal.demo_models import iris_instances
from registry import services
from registry.models import ModelVersion, Upload
from registry.storage import artifact_store
from tests.factories import register
from tests.support import eventually

pytestmark = pytest.mark.django_db

CHUNK = 128


@pytest.fixture(autouse=True)
def no_leftover_uploads():
    """The artifact store outlives each test's database; start each test with no upload bytes."""
    for path in artifact_store().uploads_dir.iterdir():
        path.unlink()


def start(client, content: bytes, *, sha256: bool = True, **extra):
    body = {"size": len(content), "filename": "iris.joblib", "chunk_size": CHUNK, **extra}
    if sha256:
        body["sha256"] = hashlib.sha256(content).hexdigest()
    return client.post("/api/v1/uploads", body, format="json")


def put(client, upload: dict, content: bytes, start_at: int, end: int | None = None, **headers):
    end = min(len(content), start_at + CHUNK) if end is None else end
    return client.generic(
        "PUT",
        upload["url"],
        content[start_at:end],
        content_type="application/octet-stream",
        HTTP_CONTENT_RANGE=f"bytes {start_at}-{end - 1}/{len(content)}",
        **headers,
    )


def send_all(client, upload: dict, content: bytes, *, offset: int = 0):
    while offset < len(content):
        response = put(client, upload, content, offset)
        assert response.status_code == 200, response.content
        offset = response.json()["offset"]
    return client.post(f"{upload['url']}/complete", {}, format="json")


def register_upload(client, upload_id: str, version: str = "1.0.0", **fields):
    body = {"upload": upload_id, "version": version, "flavor": "sklearn", "sample_input": iris_instances(), **fields}
    return client.post("/api/v1/models/iris/versions", body, format="json")


def parts():
    return sorted(artifact_store().uploads_dir.glob("*.part"))


def test_chunks_in_order_then_the_digest_check_then_registration_by_id(api, member, iris_model, iris_file):
    client = api(member)
    content = iris_file.read_bytes()
    created = start(client, content)
    assert created.status_code == 201, created.content
    upload = created.json()
    assert upload["status"] == "receiving" and upload["offset"] == 0 and upload["chunk_size"] > 0
    assert created["Location"] == upload["url"] and created["Upload-Offset"] == "0"

    first = put(client, upload, content, 0)
    assert first.status_code == 200 and first.json()["offset"] == CHUNK and first["Upload-Offset"] == str(CHUNK)
    assert client.get(upload["url"]).json()["offset"] == CHUNK  # where to resume after an interruption
    done = send_all(client, upload, content, offset=CHUNK)
    assert done.status_code == 200, done.content
    assert done.json()["status"] == "complete" and done.json()["offset"] == len(content)
    assert [u["id"] for u in client.get("/api/v1/uploads").json()["results"]] == [upload["id"]]

    registered = register_upload(client, upload["id"], metrics={"accuracy": 0.9})
    assert registered.status_code == 201, registered.content
    body = registered.json()
    assert body["sha256"] == hashlib.sha256(content).hexdigest() and body["artifact_filename"] == "iris.joblib"
    assert body["metrics"] == {"accuracy": 0.9} and body["sample_output"] == [0, 1, 2]
    assert artifact_store().exists(body["sha256"]) and parts() == []
    assert Upload.objects.get().status == "registered" and Upload.objects.get().version.version == "1.0.0"
    assert client.get("/api/v1/uploads").json()["results"] == []
    again = register_upload(client, upload["id"], version="1.0.1")
    assert again.status_code == 409 and "registered already" in again.json()["detail"]
    assert AuditEvent.objects.filter(action="model_version.register").count() == 1


def test_parts_arrive_in_any_order_and_missing_says_what_is_left(api, member, iris_model, iris_file):
    client = api(member)
    content = iris_file.read_bytes()
    upload = start(client, content, sha256=False).json()
    last = (len(content) - 1) // CHUNK * CHUNK
    assert upload["missing"] == [[0, len(content) - 1]]
    answer = put(client, upload, content, last)
    assert answer.status_code == 200 and answer.json()["offset"] == 0
    assert answer.json()["missing"] == [[0, last - 1]] and answer.json()["received"] == len(content) - last
    assert put(client, upload, content, CHUNK).json()["missing"] == [[0, CHUNK - 1], [2 * CHUNK, last - 1]]
    for offset in reversed(range(0, last, CHUNK)):
        assert put(client, upload, content, offset).status_code == 200
    state = client.get(upload["url"]).json()
    assert state["missing"] == [] and state["offset"] == state["received"] == len(content)
    done = client.post(f"{upload['url']}/complete", {"sha256": hashlib.sha256(content).hexdigest()}, format="json")
    assert done.status_code == 200 and done.json()["status"] == "complete", done.content


@pytest.mark.parametrize("hasher", ["kept-up", "gone"], ids=["hashed-as-received", "re-read-at-the-end"])
def test_the_digest_is_right_whether_or_not_a_hasher_kept_up(api, member, iris_model, iris_file, hasher):
    """Parts are hashed in order beside the requests; if that hasher went away (its process
    died), finishing the upload reads the bytes again."""
    client = api(member)
    content = iris_file.read_bytes()
    upload = start(client, content, sha256=False).json()
    for offset in range(0, len(content), CHUNK):
        assert put(client, upload, content, offset).status_code == 200
    digest_file = artifact_store().uploads_dir / f"{upload['id'].replace('-', '')}.sha256"
    eventually(digest_file.exists)  # the hasher wrote it once every part had arrived
    if hasher == "gone":
        digest_file.unlink()
    done = client.post(f"{upload['url']}/complete", {"sha256": hashlib.sha256(content).hexdigest()}, format="json")
    assert done.status_code == 200, done.content
    assert done.json()["sha256"] == hashlib.sha256(content).hexdigest()


def test_a_part_that_arrived_is_never_written_again(api, member, iris_model, iris_file):
    """A resent part (its answer was lost) is taken and dropped: the bytes that were hashed are
    the bytes on disk, whatever a later request sends."""
    client = api(member)
    content = iris_file.read_bytes()
    upload = start(client, content).json()
    assert put(client, upload, content, 0).status_code == 200
    other = b"X" * CHUNK + content[CHUNK:]
    again = put(client, upload, other, 0)
    assert again.status_code == 200 and again.json()["missing"][0][0] == CHUNK
    assert send_all(client, upload, content, offset=CHUNK).status_code == 200


def test_a_chunk_that_is_not_a_whole_part_answers_416_with_what_is_missing(api, member, iris_model, iris_file):
    client = api(member)
    content = iris_file.read_bytes()
    upload = start(client, content).json()
    put(client, upload, content, 0)
    shifted = put(client, upload, content, CHUNK + 1)
    assert shifted.status_code == 416 and shifted.json()["offset"] == CHUNK
    assert f"the part holding byte {CHUNK + 1} is bytes {CHUNK}-{2 * CHUNK - 1}" in shifted.json()["detail"]
    assert shifted.json()["missing"] == [[CHUNK, len(content) - 1]]
    two_parts = put(client, upload, content, CHUNK, 3 * CHUNK)
    assert two_parts.status_code == 416 and f"parts of {CHUNK} bytes" in two_parts.json()["detail"]
    assert send_all(client, upload, content, offset=CHUNK).status_code == 200


def test_a_digest_that_does_not_match_is_refused_and_the_bytes_are_dropped(api, member, iris_model, iris_file):
    client = api(member)
    content = iris_file.read_bytes()
    upload = start(client, content, sha256=False).json()
    corrupted = content[:100] + b"X" + content[101:]
    for offset in range(0, len(corrupted), CHUNK):
        assert put(client, upload, corrupted, offset).status_code == 200
    done = client.post(f"{upload['url']}/complete", {"sha256": hashlib.sha256(content).hexdigest()}, format="json")
    assert done.status_code == 400 and "discarded" in done.json()["detail"]
    assert client.get(upload["url"]).status_code == 404
    assert parts() == [] and not Upload.objects.exists()


def test_finishing_early_or_without_a_digest_says_what_is_missing(api, member, iris_model, iris_file):
    client = api(member)
    content = iris_file.read_bytes()
    upload = start(client, content, sha256=False).json()
    put(client, upload, content, 0)
    early = client.post(f"{upload['url']}/complete", {"sha256": "a" * 64}, format="json")
    assert early.status_code == 409 and early.json()["offset"] == CHUNK
    assert f"Send the missing parts (bytes {CHUNK}-{len(content) - 1})" in early.json()["detail"]
    assert early.json()["missing"] == [[CHUNK, len(content) - 1]]
    for offset in range(CHUNK, len(content), CHUNK):
        put(client, upload, content, offset)
    no_digest = client.post(f"{upload['url']}/complete", {}, format="json")
    assert no_digest.status_code == 400 and "sha256" in no_digest.json()["detail"]
    not_finished = register_upload(client, upload["id"])
    assert not_finished.status_code == 409 and "not finished" in not_finished.json()["detail"]


def test_a_refused_registration_keeps_the_upload_for_a_retry(api, member, iris_model, iris_file):
    client = api(member)
    content = iris_file.read_bytes()
    upload = start(client, content).json()
    send_all(client, upload, content)
    refused = register_upload(client, upload["id"], version="one")
    assert refused.status_code == 400 and "version" in refused.json()["detail"].lower()
    assert Upload.objects.get().status == "complete"
    assert not ModelVersion.objects.exists()
    assert register_upload(client, upload["id"]).status_code == 201


def test_content_already_stored_and_visible_needs_no_bytes(api, member, iris_model, iris_file):
    client = api(member)
    content = iris_file.read_bytes()
    assert register(client, "iris", iris_file).status_code == 201
    created = start(client, content)
    assert created.status_code == 201
    upload = created.json()
    assert upload["status"] == "complete" and upload["deduplicated"] and upload["offset"] == len(content)
    assert parts() == []
    assert register_upload(client, upload["id"], version="1.1.0").status_code == 201
    assert ModelVersion.objects.values("artifact").distinct().count() == 1


def test_stored_content_one_cannot_see_must_be_sent_and_is_still_stored_once(
    api, member, outsider, iris_model, iris_file
):
    from accounts.services import team_create

    assert register(api(member), "iris", iris_file).status_code == 201
    services.registered_model_create(actor=outsider, name="mine", team=team_create(actor=outsider, name="other"))
    content = iris_file.read_bytes()
    client = api(outsider)  # may upload (for their own model) but cannot see 'iris'
    upload = start(client, content).json()
    assert upload["status"] == "receiving" and not upload["deduplicated"]  # knowing a digest proves nothing
    done = send_all(client, upload, content)
    assert done.status_code == 200 and done.json()["deduplicated"]
    assert parts() == [] and artifact_store().exists(done.json()["sha256"])


def test_uploads_are_private_to_whoever_started_them(api, member, owner, iris_model, iris_file):
    content = iris_file.read_bytes()
    upload = start(api(member), content).json()
    send_all(api(member), upload, content)
    other = api(owner)
    assert other.get(upload["url"]).status_code == 404
    assert put(other, upload, content, 0).status_code == 404
    assert other.delete(upload["url"]).status_code == 404
    assert register_upload(other, upload["id"]).status_code == 400  # "no upload of yours"
    assert other.get("/api/v1/uploads/not-an-id").status_code == 404


def test_bad_chunk_headers_get_clear_errors(api, member, iris_model, iris_file):
    client = api(member)
    content = iris_file.read_bytes()
    upload = start(client, content).json()
    chunk = content[:CHUNK]

    def send(body=chunk, **headers):
        return client.generic("PUT", upload["url"], body, content_type="application/octet-stream", **headers)

    missing = send()
    assert missing.status_code == 400 and "Content-Range" in missing.json()["detail"]
    assert send(HTTP_CONTENT_RANGE="bytes=0-127").status_code == 400
    wrong_total = send(HTTP_CONTENT_RANGE=f"bytes 0-127/{len(content) + 1}")
    assert wrong_total.status_code == 400 and str(len(content)) in wrong_total.json()["detail"]
    past_end = send(HTTP_CONTENT_RANGE=f"bytes 0-{len(content)}/{len(content)}")
    assert past_end.status_code == 416
    wrong_length = send(HTTP_CONTENT_RANGE=f"bytes 0-{2 * CHUNK - 1}/{len(content)}")
    assert wrong_length.status_code == 400 and str(2 * CHUNK) in wrong_length.json()["detail"]
    assert client.get(upload["url"]).json()["offset"] == 0


def test_bad_starts_are_refused(api, member, service_account, iris_model, settings):
    client = api(member)
    assert client.post("/api/v1/uploads", {"size": 0}, format="json").status_code == 400
    assert client.post("/api/v1/uploads", {"size": 10, "sha256": "xyz"}, format="json").status_code == 400
    assert client.post("/api/v1/uploads", {"size": 10, "color": "red"}, format="json").status_code == 400
    too_big = client.post("/api/v1/uploads", {"size": settings.ARTIFACT_MAX_BYTES + 1}, format="json")
    assert too_big.status_code == 413 and "ARTIFACT_MAX_BYTES" in too_big.json()["detail"]
    assert api(service_account).post("/api/v1/uploads", {"size": 10}, format="json").status_code == 403
    assert api(member, scopes=["read"]).post("/api/v1/uploads", {"size": 10}, format="json").status_code == 403
    settings.UPLOAD_MAX_OPEN = 2
    for _ in range(2):
        assert client.post("/api/v1/uploads", {"size": 10}, format="json").status_code == 201
    crowded = client.post("/api/v1/uploads", {"size": 10}, format="json")
    assert crowded.status_code == 409 and "not registered" in crowded.json()["detail"]


def test_only_people_who_may_register_somewhere_may_upload(api, viewer, outsider, iris_model):
    for user in (viewer, outsider):
        refused = api(user).post("/api/v1/uploads", {"size": 10}, format="json")
        assert refused.status_code == 403 and "Create the model first" in refused.json()["detail"]


def test_finished_uploads_count_against_the_quota_until_registered(api, member, iris_model, iris_file, settings):
    """Finished but unregistered uploads hold disk too: they count, by number and by bytes."""
    client = api(member)
    content = iris_file.read_bytes()
    settings.UPLOAD_MAX_OPEN = 2
    for tail in (b"1", b"2"):
        done = send_all(client, start(client, content + tail).json(), content + tail)
        assert done.status_code == 200 and done.json()["status"] == "complete"
    crowded = start(client, content + b"3")
    assert crowded.status_code == 409 and "not registered" in crowded.json()["detail"]

    settings.UPLOAD_MAX_OPEN = 10
    settings.UPLOAD_MAX_OPEN_BYTES = 3 * len(content)
    too_much = start(client, content + b"3")
    assert too_much.status_code == 409 and "bytes" in too_much.json()["detail"]


def test_abort_drops_the_bytes(api, member, iris_model, iris_file, django_capture_on_commit_callbacks):
    client = api(member)
    content = iris_file.read_bytes()
    upload = start(client, content).json()
    put(client, upload, content, 0)
    assert len(parts()) == 1
    with django_capture_on_commit_callbacks(execute=True):
        assert client.delete(upload["url"]).status_code == 204
    assert parts() == [] and client.get(upload["url"]).status_code == 404


def test_idle_uploads_expire_and_are_swept(api, member, iris_model, iris_file):
    client = api(member)
    content = iris_file.read_bytes()
    idle = start(client, content).json()
    put(client, idle, content, 0)
    active = start(client, content).json()
    Upload.objects.filter(pk=idle["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    late = put(client, idle, content, CHUNK)
    assert late.status_code == 410 and "expired" in late.json()["detail"]
    assert services.upload_cleanup() == 1
    assert client.get(idle["url"]).status_code == 404
    assert [p.stem for p in parts()] == [active["id"].replace("-", "")]
    orphan = artifact_store().uploads_dir / ("f" * 32 + ".part")
    orphan.write_bytes(b"left by a crash")
    assert services.upload_cleanup() == 0  # too young: its row may not be committed yet
    assert services.upload_cleanup(orphan_grace_seconds=0) == 1 and not orphan.exists()


def test_json_registration_refuses_both_or_neither_artifact_and_large_bodies(api, member, iris_model, settings):
    client = api(member)
    neither = client.post("/api/v1/models/iris/versions", {"version": "1.0.0", "flavor": "sklearn"}, format="json")
    assert neither.status_code == 400 and "finished upload" in neither.json()["detail"]
    for bad in ("0" * 32, "not-an-id"):
        refused = register_upload(client, bad)
        assert refused.status_code == 400 and refused.json()["errors"]["upload"], refused.content


def test_an_artifact_and_an_upload_id_together_are_refused(api, member, iris_model, iris_file):
    client = api(member)
    content = iris_file.read_bytes()
    upload = start(client, content).json()
    send_all(client, upload, content)
    both = register(client, "iris", iris_file, upload=upload["id"])
    assert both.status_code == 400 and "not both" in both.json()["detail"]
    assert Upload.objects.get().status == "complete" and not ModelVersion.objects.exists()


def test_large_json_bodies_are_refused_unread(api, member, settings):
    client = api(member)
    settings.API_JSON_MAX_BYTES = 1000
    big = client.post("/api/v1/models", {"name": "x", "team": "vision", "description": "d" * 2000}, format="json")
    assert big.status_code == 413 and "at most 1000 bytes" in big.json()["detail"]


def test_giving_the_digest_of_visible_content_mid_way_completes_the_upload(
    api, member, iris_model, iris_file, django_capture_on_commit_callbacks
):
    """A client hashes while it sends: once it knows the digest and the portal holds that
    content for it already, the rest need not be sent."""
    client = api(member)
    content = iris_file.read_bytes()
    assert register(client, "iris", iris_file).status_code == 201
    upload = start(client, content, sha256=False).json()
    assert put(client, upload, content, 0).status_code == 200
    wrong = client.patch(upload["url"], {"sha256": "xyz"}, format="json")
    assert wrong.status_code == 400 and "64 hexadecimal" in wrong.json()["detail"]
    with django_capture_on_commit_callbacks(execute=True):
        told = client.patch(upload["url"], {"sha256": hashlib.sha256(content).hexdigest()}, format="json")
    assert told.status_code == 200 and told.json()["status"] == "complete" and told.json()["deduplicated"]
    assert told.json()["missing"] == [] and parts() == []
    assert register_upload(client, upload["id"], version="1.1.0").status_code == 201


def test_a_digest_given_mid_way_is_checked_at_the_end(api, member, iris_model, iris_file):
    client = api(member)
    content = iris_file.read_bytes()
    upload = start(client, content, sha256=False).json()
    told = client.patch(upload["url"], {"sha256": "a" * 64}, format="json")
    assert told.status_code == 200 and told.json()["status"] == "receiving" and told.json()["sha256"] == "a" * 64
    other = client.patch(upload["url"], {"sha256": "b" * 64}, format="json")
    assert other.status_code == 400 and "not " + "b" * 64 in other.json()["detail"]
    done = send_all(client, upload, content)
    assert done.status_code == 400 and "discarded" in done.json()["detail"]


def test_two_requests_writing_one_part_at_once_are_refused_not_interleaved(tmp_path):
    """While a part's bytes arrive, a second request for the same part is told it is busy (the
    client's retry of a connection it thinks dropped); other parts go on at the same time."""
    import threading

    from registry.storage import FileSystemArtifactStore, UploadBusy

    store = FileSystemArtifactStore(tmp_path)
    upload = store.resumable("k1", size=3 * CHUNK, part_size=CHUNK)
    upload.create()
    halfway, resume = threading.Event(), threading.Event()

    def slow():
        yield b"a" * (CHUNK // 2)
        halfway.set()
        resume.wait(10)
        yield b"a" * (CHUNK // 2)

    writer = threading.Thread(target=upload.put_part, kwargs={"number": 1, "chunks": slow()})
    writer.start()
    assert halfway.wait(10)
    with pytest.raises(UploadBusy):
        upload.put_part(number=1, chunks=[b"b" * CHUNK])
    assert upload.put_part(number=0, chunks=[b"c" * CHUNK]) and upload.put_part(number=2, chunks=[b"d" * CHUNK])
    resume.set()
    writer.join(10)
    assert upload.parts().complete
    staged = upload.verify()
    assert staged.sha256 == hashlib.sha256(b"c" * CHUNK + b"a" * CHUNK + b"d" * CHUNK).hexdigest()
