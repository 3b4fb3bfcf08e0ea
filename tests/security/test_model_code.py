"""Hostile model code, registered and served the way a user would: over HTTP, through the
portal's real web server, a real Celery worker and the real gateway.

The artifact's code runs when the registration check loads it and again when a `local` model
server loads it; each time it tries to read the portal's secrets, database, source and
another team's artifact, to see the portal's environment and processes, to connect to Redis,
the portal and another model server, and to write outside its directory. It reports what it
reached as its predictions. Everything must be blocked, while a benign model beside it
registers and serves; the same probes run outside the sandbox reach everything (the control).
"""

from __future__ import annotations

import secrets
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.conf import settings

from portal.demo_models import iris_instances
from portal_client.client import Client
from scripts.stack import stop
from tests.factories import bearer_client
from tests.security.hostile import Targets, hostile_pickle, pyfunc, run_unsandboxed
from tests.support import ROOT, call, eventually, start_gateway, start_portal_server, start_worker, test_database_url

ARTIFACTS = {"pyfunc": (pyfunc, "model.py", "pyfunc"), "pickle": (hostile_pickle, "model.joblib", "sklearn")}


@pytest.fixture
def canary(monkeypatch) -> str:
    """A value only the portal's own processes have in their environment."""
    value = f"canary-{secrets.token_hex(8)}"
    monkeypatch.setenv("PORTAL_SECURITY_CANARY", value)
    return value


@pytest.fixture
def stack(canary, transactional_db, redis_url, gateway_redis_url, tmp_path):
    """The portal as it runs for users: web server, worker, gateway (all with the canary)."""
    started = []
    try:
        started.append(web := start_portal_server(redis_url, tmp_path / "web.log"))
        started.append(worker := start_worker(redis_url, tmp_path / "worker.log"))
        started.append(gateway := start_gateway(gateway_redis_url, tmp_path / "gateway.log"))
        yield SimpleNamespace(web=web, worker=worker, gateway=gateway)
    finally:
        for proc in reversed(started):
            stop(proc)


def _redis_port(url: str) -> int:
    return int(url.rsplit("@", 1)[-1].split(":")[1].split("/")[0])


def _deploy(client: Client, service: str, version: str) -> dict:
    deployment = client.deploy(service, version, environment="development")
    final = client.wait(deployment["id"], timeout=120)
    assert final["status"] == "live", final
    return client.deployment(deployment["id"])


def _sqlite_path() -> str:
    url = test_database_url()
    return url.removeprefix("sqlite:///") if url.startswith("sqlite:") else ""


@pytest.mark.parametrize("kind", ["pyfunc", "pickle"])
def test_hostile_model_code_reaches_nothing_at_check_or_serve_time(
    kind, stack, canary, redis_url, owner, team, service_account, iris_file, environments, tmp_path
):
    client = Client(url=stack.web.url, token=bearer_client(owner).raw_token)
    # A benign model beside it: its artifact and its model server are targets too.
    client.create_model("iris", team=team.name)
    client.register_version("iris", str(iris_file), version="1.0.0", flavor="sklearn", sample_input=iris_instances())
    client.request(
        "POST", "/api/v1/services", what="create", json_body={"name": "iris", "team": team.name, "model": "iris"}
    )
    iris = _deploy(client, "iris", "1.0.0")
    iris_socket = iris["instances"][0]["url"].removeprefix("unix:")

    secret = Path(settings.ARTIFACT_ROOT).parent / "secret_key"
    secret.write_text(secrets.token_urlsafe(32))
    secret.chmod(0o600)
    stored = [p for p in Path(settings.ARTIFACT_ROOT).rglob("*") if p.is_file() and "staging" not in p.parts]
    marker = uuid.uuid4().hex
    targets = Targets(
        canary=canary,
        portal_pid=stack.web.pid,
        read={
            "secret_key": str(secret),
            "source_settings": str(ROOT / "portal" / "settings.py"),
            "other_artifact": str(stored[0]),
            **({"database": db} if (db := _sqlite_path()) else {}),
        },
        list={"artifact_store": str(settings.ARTIFACT_ROOT), "runtime_dir": str(settings.RUNTIME_DIR)},
        tcp={
            "redis": _redis_port(redis_url),
            "portal": stack.web.port,
            "gateway": stack.gateway.port,
        },
        unix={"other_model_server": iris_socket},
        write={
            "artifact_store": str(Path(settings.ARTIFACT_ROOT) / f"written-{marker}"),
            "runtime_dir": str(Path(settings.RUNTIME_DIR) / f"written-{marker}"),
            "tmp_of_the_machine": str(tmp_path / f"written-{marker}"),
        },
    )
    make, filename, flavor = ARTIFACTS[kind]
    artifact = make(tmp_path / filename, targets)

    # At check time: the registration succeeds (the code loads and predicts), and what it
    # reached is its sample output.
    client.create_model("hostile", team=team.name)
    registered = client.register_version("hostile", str(artifact), version="1.0.0", flavor=flavor, sample_input=[[1.0]])
    at_check = client.version("hostile", "1.0.0")["sample_output"][0]
    assert registered and set(at_check) == _probe_names(targets)
    assert set(at_check.values()) == {"blocked"}, at_check

    # At serve time, in a local model server behind the gateway.
    client.request(
        "POST", "/api/v1/services", what="create", json_body={"name": "hostile", "team": team.name, "model": "hostile"}
    )
    client.request(
        "POST", "/api/v1/services/hostile/grants", what="grant", json_body={"user": service_account.username}
    )
    _deploy(client, "hostile", "1.0.0")
    consumer = bearer_client(service_account, scopes=["invoke"]).raw_token
    url = f"{stack.gateway.url}/serve/development/hostile/v1/predict"
    code, answer, _ = eventually(lambda: (r := call(url, token=consumer, body={"instances": [[2.0]]}))[0] != 401 and r)
    assert code == 200, answer
    at_serve = answer["predictions"][0]
    assert set(at_serve.values()) == {"blocked"}, at_serve

    # Nothing was written where it tried; the benign model still serves.
    assert not any(Path(p).exists() for p in targets.write.values())
    client.request("POST", "/api/v1/services/iris/grants", what="grant", json_body={"user": service_account.username})
    url = f"{stack.gateway.url}/serve/development/iris/v1/predict"
    code, answer, _ = eventually(
        lambda: (r := call(url, token=consumer, body={"instances": iris_instances()}))[0] != 403 and r
    )
    assert code == 200 and answer["predictions"] == [0, 1, 2], answer

    # The control: the same probes, unsandboxed, reach every target.
    try:
        control = run_unsandboxed(targets)
    finally:
        for path in targets.write.values():
            Path(path).unlink(missing_ok=True)
    assert set(control.values()) == {"reached"}, control


def _probe_names(targets: Targets) -> set[str]:
    names = {"environment", "portal_process"}
    names |= {f"read_{n}" for n in targets.read} | {f"list_{n}" for n in targets.list}
    names |= {f"connect_{n}" for n in [*targets.tcp, *targets.unix]} | {f"write_{n}" for n in targets.write}
    return names
