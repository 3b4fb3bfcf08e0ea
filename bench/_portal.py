"""Shared set-up for benchmarks: a scratch portal (database, Redis, artifact store, runtime
directory) in a temporary folder, with Django configured in this process."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.net import free_port  # noqa: E402
from scripts.stack import redis_start, stop  # noqa: E402


def start_gateway(env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    """The gateway process (uvicorn, uvloop) on a free port with the scratch portal's settings."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return proc, port


class ScratchPortal:
    def __enter__(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="portal-bench-")
        self.dir = Path(self._tmp.name)
        self.redis_port = free_port()
        self.redis = redis_start(self.redis_port, self.dir / "redis", stdout=subprocess.DEVNULL)
        self.env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "DJANGO_ALLOW_ASYNC_UNSAFE"}}
        self.env.update(
            PORTAL_VAR_DIR=str(self.dir),
            REDIS_URL=f"redis://127.0.0.1:{self.redis_port}/0",
            LOG_LEVEL="WARNING",
            DJANGO_SETTINGS_MODULE="portal.settings",
        )
        os.environ.update(self.env)
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"], cwd=ROOT, env=self.env, check=True
        )
        import django

        django.setup()
        return self

    def __exit__(self, *exc):
        from deployments.runtime.local import LocalBackend

        LocalBackend.default().stop_all()
        stop(self.redis)
        self._tmp.cleanup()


def live_iris_service(*, replicas: int = 1, autoscaling=None):
    """Train iris, register it, create a service, deploy it to development (in this process),
    grant a consumer and return (deployment, consumer token)."""
    from accounts import services as accounts
    from deployments import rollout
    from deployments import services as deployments
    from deployments.models import Environment
    from portal.demo_models import iris_instances, train_iris
    from registry import services as registry
    from registry.storage import artifact_store

    Environment.ensure_defaults()
    owner = accounts.user_create(actor=None, username="bench-owner")
    consumer = accounts.user_create(actor=None, username="bench-consumer", is_service_account=True)
    team = accounts.team_create(actor=owner, name="bench")
    model = registry.registered_model_create(actor=owner, name="iris", team=team)
    path = Path(os.environ["PORTAL_VAR_DIR"]) / "iris.joblib"
    train_iris(path)
    staged = artifact_store().stage()
    staged.write(path.read_bytes())
    version = registry.model_version_register(
        actor=owner,
        model=model,
        staged=staged,
        data=registry.VersionInput(version="1.0.0", flavor="sklearn", sample_input={"instances": iris_instances()}),
    )
    service = deployments.service_create(actor=owner, name="iris", team=team, model=model)
    deployments.grant_create(actor=owner, service=service, user=consumer)
    deployment = deployments.deployment_request(
        actor=owner,
        service=service,
        version=version,
        environment=Environment.objects.get(name="development"),
        replicas=replicas,
        autoscaling=autoscaling,  # a deployments.services.Autoscaling, or None
    )
    rollout.rollout(deployment.pk, owner="bench")
    deployment.refresh_from_db()
    assert deployment.status == "live", list(deployment.events.values_list("message", flat=True))
    _, token = accounts.token_create(actor=None, user=consumer, name="bench", scopes=["invoke"])
    return deployment, token
