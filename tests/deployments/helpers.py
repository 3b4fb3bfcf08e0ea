from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from deployments.models import Deployment


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


def eventually(check, timeout: float = 10, interval: float = 0.05):
    """Poll until check() returns something truthy; return it (or fail after timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


def deploy_now(service, actor, environment, version, *, approver=None, replicas: int = 1) -> Deployment:
    """Request a deployment and carry it out in this process (the rollout engine itself,
    without Celery), for tests about what happens once something is live."""
    from deployments import rollout, services

    deployment = services.deployment_request(
        actor=actor, service=service, version=version, environment=environment, replicas=replicas
    )
    if deployment.status == "pending_approval":
        services.deployment_approve(actor=approver, deployment=deployment)
    rollout.rollout(deployment.pk, owner="test")
    deployment.refresh_from_db()
    assert deployment.status == "live", list(deployment.events.values_list("message", flat=True))
    return deployment
