"""What tests use besides objects: ports of their own, waiting, calling over HTTP, and the
portal's real processes (web server, Celery worker, gateway) on the test database and Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
from django.conf import settings

from deployments.models import Deployment
from portal.demo_models import iris_instances
from scripts.stack import port_open, stop, wait_until
from tests.ports import port

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- waiting and calling


def eventually(check, timeout: float = 10, interval: float = 0.05):
    """Poll until check() returns something truthy; return it (or the last falsy answer)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


def wait_for_status(deployment_id: int, statuses: set[str], timeout: float = 90) -> Deployment:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        deployment = Deployment.objects.get(pk=deployment_id)
        if deployment.status in statuses:
            return deployment
        time.sleep(0.2)
    events = list(Deployment.objects.get(pk=deployment_id).events.values_list("message", flat=True))
    raise AssertionError(f"deployment {deployment_id} is {deployment.status}, not {statuses}: {events}")


def call(
    url: str,
    *,
    token: str | None = None,
    body: bytes | dict | None = None,
    method: str | None = None,
    headers: dict | None = None,
    timeout: float = 10,
) -> tuple[int, dict, dict]:
    """One HTTP request: (status, JSON body, headers); status 0 when no answer came at all."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"))  # noqa: S310
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"{}"), response.headers
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            payload = json.loads(raw or b"{}")
        except ValueError:
            payload = {"raw": raw.decode(errors="replace")}
        return exc.code, payload, exc.headers
    except OSError as exc:  # refused, reset, timed out: no HTTP answer at all
        return 0, {"error": str(exc)}, {}


class Load:
    """A client that sends predictions continuously (in a thread) and counts what fails."""

    def __init__(self, url: str, token: str, *, timeout: float = 10):
        self.url, self.token, self.timeout = url, token, timeout
        self.sent = self.failed = 0
        self.versions: set[str] = set()
        self.failures: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        body = {"instances": iris_instances(count=1)}
        while not self._stop.is_set():
            code, payload, _ = call(self.url, token=self.token, body=body, timeout=self.timeout)
            self.sent += 1
            if code == 200:
                self.versions.add(payload["model_version"])
            else:
                self.failed += 1
                self.failures.append((code, payload))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=30)


def running_instances(name_part: str) -> list[psutil.Process]:
    """This session's model-server processes whose instance name starts with `name_part`.

    Only those working in this session's runtime directory: parallel test workers have
    deployments with the same ids, and so instances with the same names.
    """
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        cmdline = proc.info["cmdline"] or []
        ours = (proc.info["cwd"] or "").startswith(str(settings.RUNTIME_DIR))
        if ours and "modelserver" in cmdline and any(part.startswith(name_part) for part in cmdline):
            found.append(proc)
    return found


# ---------------------------------------------------------------- real processes


def test_database_url() -> str:
    """A DATABASE_URL that points other processes at the test database."""
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


test_database_url.__test__ = False


def portal_env(redis_url: str, **extra: str) -> dict[str, str]:
    """The environment of a portal process (web server, worker, gateway) in this test."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=test_database_url(),
        REDIS_URL=redis_url,
        ARTIFACT_ROOT=str(settings.ARTIFACT_ROOT),
        RUNTIME_DIR=str(settings.RUNTIME_DIR),
        PREDICTION_LOG_ROOT=str(settings.PREDICTION_LOG_ROOT),
        DEPLOYMENT_LEASE_SECONDS=str(settings.DEPLOYMENT_LEASE_SECONDS),
        GATEWAY_URL=settings.GATEWAY_URL,
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def _started(proc: subprocess.Popen, log: Path, ready, what: str, timeout: float = 60) -> subprocess.Popen:
    try:
        wait_until(lambda: ready() or proc.poll() is not None, timeout, what)
    except RuntimeError:
        stop(proc)
        raise
    assert proc.poll() is None, log.read_text()
    proc.log_path = log
    return proc


def start_portal_server(redis_url: str, log: Path, **extra: str) -> subprocess.Popen:
    """The portal's real web server (gunicorn, as `make run` starts it) on the test database."""
    listen = port()
    args = [
        str(Path(sys.executable).parent / "gunicorn"),
        "portal.wsgi:application",
        "--bind", f"127.0.0.1:{listen}",
        "--worker-class", "gthread",
        "--workers", "1",
        "--threads", "4",
        "--timeout", "300",
        "--no-control-socket",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=portal_env(redis_url, **extra),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proc = _started(proc, log, lambda: port_open(listen), "web server")
    proc.port = listen
    proc.url = f"http://127.0.0.1:{listen}"
    return proc


def start_worker(
    redis_url: str, log: Path, *, beat: bool = False, name: str = "w", env: dict[str, str] | None = None
) -> subprocess.Popen:
    """A real Celery worker process (one task at a time), optionally with the scheduler and
    extra settings in its environment."""
    args = [
        sys.executable,
        "-m", "celery",
        "-A", "portal",
        "worker",
        "--pool=solo",
        "--loglevel=INFO",
        f"--hostname={name}-{os.getpid()}@%h",
        "--without-mingle",
        "--without-gossip",
    ]  # fmt: skip
    if beat:
        args += ["--beat", "--schedule", str(log.with_suffix(".beat"))]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=portal_env(redis_url, **(env or {})),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return _started(proc, log, lambda: b"ready." in log.read_bytes(), "Celery worker")


def start_gateway(redis_url: str, log: Path, **extra: str) -> subprocess.Popen:
    """The real gateway process (uvicorn, uvloop) on the test Redis, connecting as `redis_url`
    says (the gateways' own Redis user, as make run starts it)."""
    listen = port()
    env = portal_env(redis_url, **{"GATEWAY_STALE_SECONDS": "3", **extra})
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--port", str(listen)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{listen}/health", timeout=1):
                return True
        except OSError:
            return False

    proc = _started(proc, log, healthy, "gateway", timeout=30)
    proc.url = f"http://127.0.0.1:{listen}"
    proc.port = listen
    return proc
