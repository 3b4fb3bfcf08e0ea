"""Uploads through the real web server: 1 GiB, refused before reading, and cut short."""

import hashlib
import http.client
import json
import socket
import threading
import time

import psutil
import pytest

from portal.demo_models import large_sklearn_model
from registry.models import ModelVersion
from registry.storage import artifact_store
from scripts.multipart import encode
from tests.factories import bearer_client

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
    token = bearer_client(member).raw_token
    content_type, length, chunks = encode(
        {"version": "1.0.0", "flavor": "sklearn", "sample_input": "[[1, 2, 3, 4]]"}, "artifact", path
    )
    with socket.create_connection(("127.0.0.1", portal_server.port), timeout=30) as sock:
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
    # The server notices the closed connection, discards the staged bytes, registers nothing.
    deadline = time.monotonic() + 30
    while staged_files() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not staged_files()
    assert ModelVersion.objects.count() == 0
    assert not artifact_store().exists(hashlib.sha256(path.read_bytes()).hexdigest())
