"""Upload a large model through the API and compare with `cp` on the same disk.

    .venv/bin/python bench/upload.py [--size-mib 1024] [--server gunicorn|uvicorn]

Generates a real scikit-learn model file of the given size (a fitted estimator carrying a
large random array), starts the portal's web server on a scratch database and artifact
store, registers the file as a version through `POST /api/v1/models/{name}/versions`
(streamed multipart, as the CLI sends it), and copies the same file with `cp` on the same
filesystem in the same run. Prints MB/s for both, their ratio, and the web server's peak
memory growth (RSS sampled every 20 ms). Target: ratio >= 0.8, growth <= 64 MiB.
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

from portal.demo_models import large_sklearn_model  # noqa: E402
from scripts.multipart import encode  # noqa: E402
from scripts.stack import free_port, stop, wait_until  # noqa: E402

MIB = 1024 * 1024


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    )
    return result.stdout.strip()


def start_server(kind: str, port: int, env: dict[str, str]) -> subprocess.Popen:
    bin_dir = Path(sys.executable).parent
    if kind == "uvicorn":
        args = [str(bin_dir / "uvicorn"), "portal.asgi:application", "--host", "127.0.0.1", "--port", str(port),
                "--no-access-log", "--lifespan", "off"]  # fmt: skip
    else:
        args = [str(bin_dir / "gunicorn"), "portal.wsgi:application", "--bind", f"127.0.0.1:{port}",
                "--workers", "1", "--threads", "4", "--worker-class", "gthread", "--timeout", "600",
                "--no-control-socket"]  # fmt: skip
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
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


def timed_cp(source: Path, target: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["cp", str(source), str(target)], check=True)
    elapsed = time.perf_counter() - started
    target.unlink()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--server", choices=["gunicorn", "uvicorn"], default="gunicorn")
    parser.add_argument("--repeat", type=int, default=2, help="uploads (and copies) to run; the best is reported")
    args = parser.parse_args()
    size = args.size_mib * MIB

    with tempfile.TemporaryDirectory(
        prefix="portal-bench-", dir=ROOT / "var" if (ROOT / "var").exists() else None
    ) as tmp:
        work = Path(tmp)
        env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "DJANGO_ALLOW_ASYNC_UNSAFE"}}
        env.update(PORTAL_VAR_DIR=str(work), ARTIFACT_ROOT=str(work / "artifacts"), LOG_LEVEL="WARNING")
        manage(env, "migrate", "--no-input", "-v", "0")
        manage(env, "seed_demo")
        token = manage(env, "create_token", "scientist", "--name", "bench")
        model_path = work / "model.joblib"
        print(f"generating a {args.size_mib} MiB scikit-learn model…", flush=True)
        large_sklearn_model(model_path, size)
        size = model_path.stat().st_size

        port = free_port()
        proc = start_server(args.server, port, env)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            body = json.dumps({"name": "bench", "team": "data-science"})
            conn.request("POST", "/api/v1/models", body, {"Authorization": f"Bearer {token}",
                                                            "Content-Type": "application/json"})  # fmt: skip
            assert conn.getresponse().status == 201
            pid = server_pid(proc, args.server)
            uploads, copies, growth = [], [], 0
            for i in range(args.repeat):
                # Each round: a different version of the same bytes, then cp of the same file.
                with PeakRss(pid) as rss:
                    elapsed, payload = upload(port, token, model_path, f"1.0.{i}")
                growth = max(growth, rss.peak - rss.baseline)
                uploads.append(elapsed)
                copies.append(timed_cp(model_path, work / "artifacts" / "cp-target"))
                (work / "artifacts" / "sha256" / payload["sha256"][:2] / payload["sha256"]).unlink()
        finally:
            stop(proc)

    up, cp = min(uploads), min(copies)
    mb = size / 1e6
    print(f"file: {size / MIB:.0f} MiB, server: {args.server}, best of {args.repeat}")
    print(f"upload through the API: {mb / up:8.1f} MB/s  ({up:.2f} s, includes the model load check)")
    print(f"cp on the same disk:    {mb / cp:8.1f} MB/s  ({cp:.2f} s)")
    print(f"ratio upload/cp:        {cp / up:8.2f}   (target >= 0.80)")
    print(f"web server peak memory growth: {growth / MIB:.1f} MiB   (target <= 64 MiB)")


if __name__ == "__main__":
    main()
