"""Upload a large model through the API and compare with `cp` on the same disk.

    .venv/bin/python bench/upload.py [--size-mib 1024] [--server gunicorn|uvicorn] [--chunk-mib 16]

Generates a real scikit-learn model file of the given size (a fitted estimator carrying a
large random array), starts the portal's web server on a scratch database and artifact
store, registers the file as a version through `POST /api/v1/models/{name}/versions`
(streamed multipart, as the CLI sends it), and copies the same file with `cp` on the same
filesystem in the same run. Then registers it again through the resumable protocol, as
`portal versions register` and `Client.register_version` do: the client hashes the file,
sends it in chunks (`PUT /api/v1/uploads/{id}`), the portal checks the digest, and a JSON
registration references the upload. Prints MB/s for each, their ratio to `cp`, and the web
server's peak memory growth (RSS sampled every 20 ms). Target: ratio >= 0.8, growth <= 64 MiB.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.net import free_port  # noqa: E402
from portal.demo_models import large_sklearn_model  # noqa: E402
from scripts.multipart import encode  # noqa: E402
from scripts.stack import redis_start, stop, wait_until  # noqa: E402

MIB = 1024 * 1024


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    )
    return result.stdout.strip()


def start_server(kind: str, port: int, env: dict[str, str]) -> subprocess.Popen:
    bin_dir = Path(sys.executable).parent
    if kind == "uvicorn":
        args = [
            str(bin_dir / "uvicorn"),
            "portal.asgi:application",
            "--host", "127.0.0.1",
            "--port", str(port),
            "--no-access-log",
            "--lifespan", "off",
        ]  # fmt: skip
    else:
        args = [
            str(bin_dir / "gunicorn"),
            "portal.wsgi:application",
            "--bind", f"127.0.0.1:{port}",
            "--workers", "1",
            "--threads", "4",
            "--worker-class", "gthread",
            "--timeout", "600",
            "--no-control-socket",
        ]  # fmt: skip
    proc = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    wait_until(lambda: _answers(port) or proc.poll() is not None, 60, "web server")
    if proc.poll() is not None:
        raise SystemExit(proc.stderr.read().decode())
    return proc


def _answers(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        conn.request("GET", "/health")
        conn.getresponse().read()
        return True
    except OSError:
        return False


def server_pid(proc: subprocess.Popen, kind: str) -> int:
    """The process that handles requests (gunicorn's worker, not its arbiter)."""
    if kind == "gunicorn":
        wait_until(lambda: bool(psutil.Process(proc.pid).children()), 30, "gunicorn worker")
        return psutil.Process(proc.pid).children()[0].pid
    return proc.pid


class PeakRss:
    def __init__(self, pid: int):
        self.process = psutil.Process(pid)
        self.baseline = self.process.memory_info().rss
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.NoSuchProcess:
                return
            time.sleep(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def upload(port: int, token: str, path: Path, version: str) -> tuple[float, dict]:
    fields = {"version": version, "flavor": "sklearn", "sample_input": json.dumps({"instances": [[1, 2, 3, 4]]})}
    content_type, length, body = encode(fields, "artifact", path)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.perf_counter()
    conn.putrequest("POST", "/api/v1/models/bench/versions")
    conn.putheader("Authorization", f"Bearer {token}")
    conn.putheader("Content-Type", content_type)
    conn.putheader("Content-Length", str(length))
    conn.endheaders()
    for chunk in body:
        conn.send(chunk)
    response = conn.getresponse()
    payload = json.loads(response.read() or b"{}")
    elapsed = time.perf_counter() - started
    if response.status != 201:
        raise SystemExit(f"upload failed: {response.status} {payload}")
    return elapsed, payload


def resumable(url: str, token: str, path: Path, version: str, chunk: int) -> tuple[float, float, dict]:
    """(seconds to hash + send + finish the upload, seconds to register it, the version)."""
    from portal_client import Client

    client = Client(url=url, token=token, timeout=600)
    started = time.perf_counter()
    upload = client.upload(path, chunk_size=chunk)
    sent = time.perf_counter()
    version = client.request(
        "POST",
        "/api/v1/models/bench/versions",
        what="register",
        json_body={"upload": upload["id"], "version": version, "flavor": "sklearn", "sample_input": [[1, 2, 3, 4]]},
    )
    return sent - started, time.perf_counter() - sent, version


def timed_cp(source: Path, target: Path, *, durable: bool = False) -> float:
    """`cp` alone (the page cache takes it), or `cp` then `sync` of the copy: the portal
    fsyncs every artifact before it answers, so the durable copy is the like-for-like one."""
    started = time.perf_counter()
    subprocess.run(["cp", str(source), str(target)], check=True)
    if durable:
        subprocess.run(["sync", str(target)], check=True)
    elapsed = time.perf_counter() - started
    target.unlink()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--server", choices=["gunicorn", "uvicorn"], default="gunicorn")
    parser.add_argument("--repeat", type=int, default=2, help="uploads (and copies) to run; the best is reported")
    parser.add_argument("--chunk-mib", type=int, default=16, help="chunk size of the resumable upload")
    args = parser.parse_args()
    size = args.size_mib * MIB

    with tempfile.TemporaryDirectory(
        prefix="portal-bench-", dir=ROOT / "var" if (ROOT / "var").exists() else None
    ) as tmp:
        work = Path(tmp)
        env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "DJANGO_ALLOW_ASYNC_UNSAFE"}}
        # A Redis of its own: seeding the demo queues its deployments.
        redis_port = free_port()
        redis = redis_start(redis_port, work / "redis", stdout=subprocess.DEVNULL)
        env.update(
            PORTAL_VAR_DIR=str(work),
            ARTIFACT_ROOT=str(work / "artifacts"),
            LOG_LEVEL="WARNING",
            REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        )
        os.environ["XDG_CACHE_HOME"] = str(work / "cache")  # the client's resume ledger
        proc = None
        try:
            manage(env, "migrate", "--no-input", "-v", "0")
            manage(env, "seed_demo")
            token = manage(env, "create_token", "scientist", "--name", "bench")
            model_path = work / "model.joblib"
            print(f"generating a {args.size_mib} MiB scikit-learn model…", flush=True)
            large_sklearn_model(model_path, size)
            size = model_path.stat().st_size

            port = free_port()
            proc = start_server(args.server, port, env)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            body = json.dumps({"name": "bench", "team": "data-science"})
            conn.request(
                "POST", "/api/v1/models", body, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            )
            assert conn.getresponse().status == 201
            pid = server_pid(proc, args.server)
            uploads, copies, durable, sends, registers, growth, chunk_growth = [], [], [], [], [], 0, 0
            for i in range(args.repeat):
                # Each round: a different version of the same bytes, then cp of the same file,
                # then the resumable path. The stored copy is removed after each, so every
                # upload really stores the bytes.
                with PeakRss(pid) as rss:
                    elapsed, payload = upload(port, token, model_path, f"1.{2 * i}.0")
                growth = max(growth, rss.peak - rss.baseline)
                uploads.append(elapsed)
                stored = work / "artifacts" / "sha256" / payload["sha256"][:2] / payload["sha256"]
                stored.unlink()
                copies.append(timed_cp(model_path, work / "artifacts" / "cp-target"))
                durable.append(timed_cp(model_path, work / "artifacts" / "cp-target", durable=True))
                with PeakRss(pid) as rss:
                    send, register, _ = resumable(
                        f"http://127.0.0.1:{port}", token, model_path, f"1.{2 * i + 1}.0", args.chunk_mib * MIB
                    )
                chunk_growth = max(chunk_growth, rss.peak - rss.baseline)
                sends.append(send)
                registers.append(register)
                stored.unlink()
        finally:
            if proc is not None:
                stop(proc)
            stop(redis)

    up, cp, cp_sync = min(uploads), min(copies), min(durable)
    best = min(range(len(sends)), key=lambda i: sends[i] + registers[i])
    send, register = sends[best], registers[best]
    resumable_total = send + register
    mb = size / 1e6
    print(f"file: {size / MIB:.0f} MiB, server: {args.server}, best of {args.repeat}")
    print(f"{'':44} {'MB/s':>8} {'seconds':>8} {'/ cp':>6} {'/ cp+sync':>9}")
    for label, seconds in [
        ("cp on the same disk (page cache)", cp),
        ("cp + sync (durable, like the portal)", cp_sync),
        ("one multipart request, registered", up),
        (f"resumable, {args.chunk_mib} MiB chunks, registered", resumable_total),
        ("resumable: hash + send + digest check", send),
    ]:
        print(f"{label:44} {mb / seconds:8.1f} {seconds:8.2f} {cp / seconds:6.2f} {cp_sync / seconds:9.2f}")
    print(f"(resumable registration step: {register:.2f} s, the model load check; target: ratio >= 0.80)")
    print(
        f"web server peak memory growth: multipart {growth / MIB:.1f} MiB, resumable {chunk_growth / MIB:.1f} MiB"
        "   (target <= 64 MiB)"
    )


if __name__ == "__main__":
    main()
