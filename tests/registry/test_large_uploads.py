"""Uploads through the real web server: 1 GiB, refused before reading, cut short, gone silent."""

import contextlib
import hashlib
import http.client
import json
import socket
import threading
import time

import psutil
import pytest
from django.test import Client

from portal.demo_models import large_sklearn_model
from registry.models import ModelVersion
from registry.storage import artifact_store
from scripts.multipart import encode
from scripts.stack import stop
from tests.factories import bearer_client
from tests.support import start_portal_server

pytestmark = pytest.mark.django_db(transaction=True)

GIB = 1024**3


def post_stream(server, token: str, fields: dict, path, *, limit: int | None = None):
    content_type, length, chunks = encode(fields, "artifact", path)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
    conn.putrequest("POST", "/api/v1/models/iris/versions")
    conn.putheader("Authorization", f"Bearer {token}")
    conn.putheader("Content-Type", content_type)
    conn.putheader("Content-Length", str(length))
    conn.endheaders()
    for chunk in chunks:
        conn.send(chunk)
    response = conn.getresponse()
    return response.status, json.loads(response.read() or b"{}")


@contextlib.contextmanager
def half_a_registration(server, token: str, path):
    """A connection that has sent the headers and half the body of a registration of `path`,
    and then sends nothing more until it is closed."""
    content_type, length, chunks = encode(
        {"version": "1.0.0", "flavor": "sklearn", "sample_input": "[[1, 2, 3, 4]]"}, "artifact", path
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(
            (
                "POST /api/v1/models/iris/versions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n"
            ).encode()
        )
        sent = 0
        for chunk in chunks:
            sock.sendall(chunk)
            sent += len(chunk)
            if sent > length // 2:
                break
        yield sock


def staged_files():
    return list(artifact_store().staging_dir.glob("*.part"))


def test_a_1_gib_upload_streams_through_with_bounded_memory(portal_server, iris_model, member, tmp_path):
    path = tmp_path / "big.joblib"
    large_sklearn_model(path, GIB)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(8 * 1024 * 1024):
            digest.update(chunk)
    token = bearer_client(member).raw_token
    # A first API call loads what every request needs (the URLs, the views and what they
    # import), so what is measured below is the upload alone.
    warm = http.client.HTTPConnection("127.0.0.1", portal_server.port, timeout=60)
    warm.request("GET", "/api/v1/models/iris", headers={"Authorization": f"Bearer {token}"})
    assert warm.getresponse().status == 200
    warm.close()
    worker = psutil.Process(portal_server.pid).children()[0]
    baseline, peak = worker.memory_info().rss, 0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, worker.memory_info().rss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        status, body = post_stream(
            portal_server,
            token,
            {"version": "1.0.0", "flavor": "sklearn", "sample_input": "[[1, 2, 3, 4]]", "sha256": digest.hexdigest()},
            path,
        )
    finally:
        done.set()
        sampler.join()
    assert status == 201, body
    assert body["sha256"] == digest.hexdigest() and body["size"] == path.stat().st_size
    assert artifact_store().local_path(body["sha256"]).stat().st_size == path.stat().st_size
    # Never held whole in memory: the web server grew by far less than the file.
    assert peak - baseline < 128 * 1024 * 1024, f"grew {(peak - baseline) / 2**20:.0f} MiB"
    assert not staged_files()
    artifact_store().delete(body["sha256"])


def test_an_oversized_upload_is_refused_before_the_body_is_sent(portal_server, iris_model, member):
    token = bearer_client(member).raw_token
    with socket.create_connection(("127.0.0.1", portal_server.port), timeout=30) as sock:
        sock.sendall(
            (
                "POST /api/v1/models/iris/versions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                f"Content-Length: {10 * GIB}\r\n\r\n"
            ).encode()
        )
        # Not one byte of the body is sent: the answer must come anyway.
        response = http.client.HTTPResponse(sock)
        response.begin()
        detail = json.loads(response.read())["detail"]
    assert response.status == 413, detail
    assert "larger than the limit" in detail
    assert not staged_files()


def test_an_upload_cut_short_leaves_nothing_behind(portal_server, iris_model, member, tmp_path):
    path = tmp_path / "mid.joblib"
    large_sklearn_model(path, 64 * 1024 * 1024)
    with half_a_registration(portal_server, bearer_client(member).raw_token, path):
        pass
    # The server notices the closed connection, discards the staged bytes, registers nothing.
    deadline = time.monotonic() + 30
    while staged_files() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not staged_files()
    assert ModelVersion.objects.count() == 0
    assert not artifact_store().exists(hashlib.sha256(path.read_bytes()).hexdigest())


@pytest.fixture
def impatient_server(transactional_db, redis_url, tmp_path):
    """The real web server, giving up on a body whose bytes stop for 2 s."""
    proc = start_portal_server(redis_url, tmp_path / "web.log", UPLOAD_CHUNK_IDLE_SECONDS="2")
    yield proc
    stop(proc)


def test_an_upload_that_goes_silent_is_given_up_and_frees_its_thread(impatient_server, iris_model, member, tmp_path):
    """A connection that stops sending without closing (no FIN, no RST) must not hold a web
    thread for ever: after the idle limit the registration answers 408 and keeps nothing."""
    path = tmp_path / "mid.joblib"
    large_sklearn_model(path, 8 * 1024 * 1024)
    with half_a_registration(impatient_server, bearer_client(member).raw_token, path) as sock:
        # Then nothing more, and the connection stays open: the answer must come anyway.
        response = http.client.HTTPResponse(sock)
        response.begin()
        detail = json.loads(response.read())["detail"]
    assert response.status == 408, detail
    assert "stopped arriving for 2 s" in detail and "nothing was registered" in detail
    assert not staged_files() and ModelVersion.objects.count() == 0


def test_someone_who_may_not_register_is_refused_before_the_upload_is_read(iris_model, viewer, iris_file):
    """The form and a signed-in API call (whose CSRF check reads the body first) refuse before a
    byte of the artifact is staged or a check process starts."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(viewer)
    client.get("/models/")  # the CSRF cookie
    token = client.cookies["csrftoken"].value
    fields = {"version": "1.0.0", "flavor": "sklearn", "sample_input": "[[1, 2, 3, 4]]", "csrfmiddlewaretoken": token}
    with open(iris_file, "rb") as handle:
        form = client.post("/models/iris/versions/new", {**fields, "artifact": handle})
    assert form.status_code == 403 and b"may register versions" in form.content
    with open(iris_file, "rb") as handle:
        api = client.post("/api/v1/models/iris/versions", {**fields, "artifact": handle}, HTTP_X_CSRFTOKEN=token)
    assert api.status_code == 403 and "may register versions" in api.json()["detail"]
    assert not staged_files() and ModelVersion.objects.count() == 0
