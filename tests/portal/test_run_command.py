"""`make run` starts the whole portal, keeps data across runs, and Ctrl-C leaves nothing behind."""

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request

import psutil
import pytest

from portal.demo_models import iris_instances
from scripts.stack import redis_start, stop
from tests.ports import port as free_port
from tests.support import ROOT, call, eventually

pytestmark = pytest.mark.worker


def run_env(tmp_path, **extra: str) -> dict[str, str]:
    """The environment of a person's shell: nothing of the test session's portal."""
    drop = {"DATABASE_URL", "REDIS_URL", "DJANGO_ALLOW_ASYNC_UNSAFE", "ARTIFACT_ROOT", "RUNTIME_DIR", "GATEWAY_URL"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(PORTAL_VAR_DIR=str(tmp_path), PYTHONUNBUFFERED="1", **extra)
    return env


def start_portal(tmp_path, port: int, redis_port: int) -> tuple[subprocess.Popen, list[str]]:
    env = run_env(tmp_path, PORT=str(port), GATEWAY_PORT=str(free_port()), PORTAL_REDIS_PORT=str(redis_port))
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        lines.append(line)
        if "Press Ctrl-C to stop everything" in line:
            break
        assert time.monotonic() < deadline, "".join(lines)
    assert proc.poll() is None, "".join(lines)
    return proc, lines


def model_servers(tmp_path) -> list[psutil.Process]:
    """Model servers started for this portal (their artifacts live under its var dir)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "modelserver" in cmdline and str(tmp_path) in cmdline:
            found.append(process)
    return found


def stop_portal(proc: subprocess.Popen) -> str:
    """Ctrl-C, and what it printed since the banner."""
    proc.send_signal(signal.SIGINT)
    return proc.communicate(timeout=60)[0]


def test_run_serves_and_ctrl_c_stops_everything(tmp_path):
    port, redis_port = free_port(), free_port()
    proc, lines = start_portal(tmp_path, port, redis_port)
    try:
        output = "".join(lines)
        assert f"http://127.0.0.1:{port}" in output and "scientist" in output and "approver" in output
        assert "Redis started" in output
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/login/", timeout=5) as response:
            assert b"Sign in" in response.read()
        # make run is the one start with DEBUG on: Django's debug 404 lists the URL patterns.
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/no-such-page", timeout=5)
        assert missing.value.code == 404 and b"URLconf" in missing.value.read()
        children = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(" ".join(c.cmdline()) for c in children)
        assert "redis-server" in names and "celery" in names and "gunicorn" in names and "-m gateway" in names
        # The worker rolls out the demo's development deployments: model servers start.
        deadline = time.monotonic() + 90
        while len(model_servers(tmp_path)) < 2:
            assert time.monotonic() < deadline, "the demo deployments did not start"
            time.sleep(0.5)
        children += model_servers(tmp_path)
        # A token made with manage.py beside make run reaches its Redis (password, port) and so
        # the gateway, which reads Redis as its own user.
        created = subprocess.run(
            [sys.executable, "manage.py", "create_token", "consumer-app", "--scopes", "invoke"],
            cwd=ROOT,
            env=run_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert created.returncode == 0, created.stderr
        gateway = re.search(r"Gateway \(model services\): (\S+)/serve", output).group(1)
        predict = f"{gateway}/serve/development/iris/v1/predict"
        body = {"instances": iris_instances(count=1)}
        assert eventually(lambda: call(predict, token=created.stdout.strip(), body=body)[0] == 200, timeout=60)
    finally:
        after = stop_portal(proc)
    assert proc.returncode == 0
    # A calm terminal: no Celery banner, and none of the periodic tasks' lines (several a second).
    assert "[tasks]" not in output and " -------------- " not in output
    assert "advance_candidates" not in after and "succeeded in" not in after, after[-2000:]
    time.sleep(0.5)
    left = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not left, [c.cmdline() for c in left]
    assert not model_servers(tmp_path)

    # A second run keeps the data and does not duplicate the demo.
    proc, lines = start_portal(tmp_path, port, redis_port)
    stop_portal(proc)
    assert "Demo data: already present." in "".join(lines)
    with sqlite3.connect(tmp_path / "portal.sqlite3") as db:
        users = db.execute("select count(*) from accounts_user").fetchone()[0]
        teams = db.execute("select count(*) from accounts_team").fetchone()[0]
    assert (users, teams) == (4, 1)


def test_run_refuses_a_taken_port(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        env.update(PORT=str(port), PORTAL_VAR_DIR=str(tmp_path))
        result = subprocess.run(
            [sys.executable, "-m", "scripts.run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 1
    assert f"Port {port} is already in use" in result.stdout


def test_run_refuses_a_redis_it_did_not_start(tmp_path):
    """Whatever answers on the port is not make run's (its own dies with it): using it would hand
    the portal's routes and grants to whoever runs it."""
    redis_port = free_port()
    stranger = redis_start(redis_port, tmp_path / "stranger", stdout=subprocess.DEVNULL)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "scripts.run"],
            cwd=ROOT,
            env=run_env(tmp_path, PORT=str(free_port()), PORTAL_REDIS_PORT=str(redis_port)),
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        stop(stranger)
    assert result.returncode == 1
    assert f"Port {redis_port} is taken" in result.stdout and "REDIS_URL=" in result.stdout
