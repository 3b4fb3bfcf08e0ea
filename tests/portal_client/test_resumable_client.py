"""Resumable uploads from the client's side: dropped connections, killed commands, 2 GiB."""

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from accounts.services import token_create
from portal_client import Client
from registry.models import Upload
from registry.selectors import upload_parts
from registry.storage import artifact_store
from scripts.stack import stop, wait_until
from tests.portal_client.harness import Cli
from tests.support import ROOT, start_portal_server

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cli]

MIB = 1024**2
GIB = 1024**3
HTTP_OVERHEAD = 64 * 1024  # request lines, headers and small JSON bodies of every request


@pytest.fixture
def token(member, team) -> str:
    from registry import services

    services.registered_model_create(actor=member, name="iris", team=team)  # uploads are for a model
    return token_create(actor=None, user=member, name="client")[1]


@pytest.fixture
def payload(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(os.urandom(8 * MIB))
    return path


def server_received() -> int:
    """Bytes of the parts the portal holds."""
    return upload_parts(upload=Upload.objects.get()).received_bytes


def test_a_connection_dropped_halfway_resumes_and_resends_at_most_one_part(proxy, token, payload, cli_home):
    size, chunk = payload.stat().st_size, MIB
    proxy.cut_at(size // 2)
    client = Client(url=proxy.url, token=token)
    upload = client.upload(payload, chunk_size=chunk, parallel=4)
    assert proxy.cuts == 1  # the network really failed once, mid-part
    assert upload["status"] == "complete" and upload["offset"] == size and upload["missing"] == []
    assert upload["sha256"] == hashlib.sha256(payload.read_bytes()).hexdigest()
    assert proxy.sent <= size + chunk + HTTP_OVERHEAD, f"sent {proxy.sent} bytes for a {size}-byte file"
    staged = artifact_store().resumable(Upload.objects.get().key).path
    assert staged.read_bytes() == payload.read_bytes()


def test_parts_go_several_at_once_and_out_of_order(portal_server, token, tmp_path, cli_home):
    """With four parts in flight the portal receives them on four connections at once, so they
    finish in whatever order the network lets them; the stored bytes are still the file's."""
    path = tmp_path / "model.bin"
    path.write_bytes(os.urandom(32 * MIB))
    seen: list[tuple[int, int]] = []  # (part, parts in flight when it was sent)
    client = Client(url=portal_server.url, token=token)
    in_flight = 0
    lock = threading.Lock()
    send = client.request

    def counting(method, url, **kwargs):
        nonlocal in_flight
        if method != "PUT":
            return send(method, url, **kwargs)
        with lock:
            in_flight += 1
            seen.append((int(kwargs["headers"]["Content-Range"].split()[1].split("-")[0]) // MIB, in_flight))
        try:
            return send(method, url, **kwargs)
        finally:
            with lock:
                in_flight -= 1

    client.request = counting
    upload = client.upload(path, chunk_size=MIB, parallel=4)
    assert upload["status"] == "complete" and upload["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sorted(part for part, _ in seen) == list(range(32))  # each part once
    assert max(n for _, n in seen) == 4  # never more than asked for, and that many at once
    assert artifact_store().resumable(Upload.objects.get().key).path.read_bytes() == path.read_bytes()


def test_a_killed_command_resumes_where_it_stopped_on_the_next_run(proxy, token, payload, cli_home):
    size, chunk = payload.stat().st_size, MIB
    portal = Cli(home=cli_home, url=proxy.url)
    proxy.stall_at(size // 2)  # the connection hangs halfway; the user gives up with kill
    first = portal.popen("uploads", "push", str(payload), "--chunk-size", str(chunk), PORTAL_TOKEN=token)
    wait_until(lambda: proxy.sent >= size // 2 or first.poll() is not None, 60, "half the upload")
    first.kill()
    first.wait()
    # The portal keeps the parts that arrived whole; those cut short by the kill are sent again.
    wait_until(lambda: Upload.objects.exists() and server_received() >= chunk, 30, "the portal to hold parts")
    held = server_received()

    proxy.reset()
    second = portal("uploads", "push", str(payload), "--chunk-size", str(chunk), "--json", PORTAL_TOKEN=token)
    assert second.returncode == 0, second.stderr
    upload = json.loads(second.stdout)
    assert upload["status"] == "complete" and Upload.objects.count() == 1  # the same upload, resumed
    assert proxy.sent <= size - held + HTTP_OVERHEAD, f"resent {proxy.sent} bytes with {held} of {size} held"
    assert artifact_store().resumable(upload["id"].replace("-", "")).path.read_bytes() == payload.read_bytes()


def test_two_gib_upload_with_bounded_memory_on_both_sides(portal_server, token, tmp_path, cli_home):
    """Memory is measured as peak growth over the same path with a small file (both sides
    then have every module imported), so it shows what the 2 GiB cost, not start-up."""
    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small.write_bytes(os.urandom(MIB))
    with open(big, "wb") as handle:  # sparse: costs no disk on this side
        handle.truncate(2 * GIB)
    portal = Cli(home=cli_home, url=portal_server.url)
    worker = psutil.Process(portal_server.pid).children()[0]

    _, client_baseline = _push(portal, small, token)
    server_baseline = _peak_rss(worker.pid)
    upload, client_peak = _push(portal, big, token)
    assert upload["status"] == "complete" and upload["size"] == 2 * GIB
    assert upload["sha256"] == _zeros_sha256(2 * GIB)
    client_growth = client_peak - client_baseline
    server_growth = _peak_rss(worker.pid) - server_baseline
    print(f"2 GiB upload: client peak growth {client_growth / MIB:.0f} MiB, server {server_growth / MIB:.0f} MiB")
    assert client_growth < 64 * MIB, f"the client grew by {client_growth / MIB:.0f} MiB for a 2 GiB upload"
    assert server_growth < 64 * MIB, f"the web server grew by {server_growth / MIB:.0f} MiB for a 2 GiB upload"
    Client(url=portal_server.url, token=token).request("DELETE", upload["url"], what="abort")
    assert not list(artifact_store().uploads_dir.glob(f"{upload['id'].replace('-', '')}*"))


def _push(portal: Cli, path, token: str) -> tuple[dict, int]:
    """`portal uploads push PATH` in a Python that reports its own peak memory as it exits."""
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent (pytest).
    wrapper = (
        "import atexit, sys\n"
        "hwm = lambda: [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
        "atexit.register(lambda: sys.stderr.write(f'MAXRSS_KIB={hwm()}\\n'))\n"
        "from portal_client.cli import main\n"
        "sys.argv = ['portal', *sys.argv[1:]]\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", wrapper, "uploads", "push", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=portal.env(PORTAL_TOKEN=token),
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), int(result.stderr.split("MAXRSS_KIB=")[1].split()[0]) * 1024


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _zeros_sha256(size: int) -> str:
    digest, block = hashlib.sha256(), bytes(16 * MIB)
    for _ in range(size // len(block)):
        digest.update(block)
    return digest.hexdigest()


def test_a_connection_that_goes_silent_does_not_hold_the_upload(redis_url, tmp_path, token, cli_home):
    """A network that drops without a word (no FIN, no RST) leaves a half-open connection; the
    portal gives up on the part after UPLOAD_CHUNK_IDLE_SECONDS of silence, and the retry
    goes through instead of hearing "the part is arriving right now" forever."""
    import socket

    server = start_portal_server(redis_url, tmp_path / "web.log", UPLOAD_CHUNK_IDLE_SECONDS="2")
    silent = None
    try:
        client = Client(url=server.url, token=token)
        content = os.urandom(1000)
        body = {"size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
        upload = client.request("POST", "/api/v1/uploads", what="start", json_body=body)
        silent = socket.create_connection(("127.0.0.1", server.port))
        silent.sendall(
            f"PUT {upload['url']} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 1000\r\n"
            f"Content-Range: bytes 0-999/{len(content)}\r\n\r\n".encode()
            + content[:300]
        )  # then nothing more, and the socket stays open
        # Meanwhile the silent request holds the part: a retry hears that it is still arriving…
        part = artifact_store().resumable(upload["id"].replace("-", "")).path
        wait_until(lambda: _locked(part), 10, "the silent chunk to hold the upload")
        assert not _put_rest(client, upload, content)
        # …until the portal gives up on it and the retry goes through.
        wait_until(lambda: _put_rest(client, upload, content), 15, "the upload to take the bytes again")
        done = client.request("POST", f"{upload['url']}/complete", what="finish", json_body={})
        assert done["status"] == "complete"
    finally:
        if silent is not None:
            silent.close()
        stop(server)


def _locked(path: Path) -> bool:
    """Whether a request is writing this upload's first part (it holds the part's range lock)."""
    import fcntl
    import struct

    with open(path, "rb") as handle:
        query = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 1, 0)
        answer = fcntl.fcntl(handle.fileno(), fcntl.F_OFD_GETLK, query)
        return struct.unpack("hhqqi", answer)[0] != fcntl.F_UNLCK


def _put_rest(client: Client, upload: dict, content: bytes) -> bool:
    """Send the bytes after the portal's offset; False while the silent request still holds them."""
    from portal_client import Refused

    offset = client.request("GET", upload["url"], what="offset")["offset"]
    try:
        client.request(
            "PUT",
            upload["url"],
            what="chunk",
            data=content[offset:],
            headers={
                "Content-Range": f"bytes {offset}-{len(content) - 1}/{len(content)}",
                "Content-Type": "application/octet-stream",
            },
        )
    except Refused as exc:
        assert exc.status == 409 and "arriving right now" in exc.message, exc.message
        return False
    return True
