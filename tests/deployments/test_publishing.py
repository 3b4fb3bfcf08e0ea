"""The gateway's answers, each error case, and how it behaves when its sources fail."""

import http.client
import json
import subprocess
import sys
import time

import pytest

from accounts import services as accounts
from deployments import services
from deployments.models import Grant
from portal.demo_models import iris_instances
from tests.factories import bearer_client, deploy_now
from tests.support import ROOT, call, eventually

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def live(iris_service, member, environments, service_account):
    deployment = deploy_now(iris_service, member, environments["development"], iris_service.model.versions.get())
    services.grant_create(
        actor=iris_service.team.memberships.get(role="owner").user, service=iris_service, user=service_account
    )
    return deployment


def ready(gateway, token):
    url = f"{gateway.url}/serve/development/iris-api/v1/predict"
    return eventually(lambda: call(url, token=token, body={"instances": iris_instances(count=1)})[0] == 200)


def test_every_error_case(live, gateway, service_account, owner):
    token = bearer_client(service_account, scopes=["invoke"]).raw_token
    assert ready(gateway, token)
    base = f"{gateway.url}/serve/development/iris-api/v1"
    good = {"instances": iris_instances(count=2)}

    def problem(status, url=base + "/predict", **kwargs):
        code, body, headers = call(url, **kwargs)
        assert code == status, body
        assert headers["Content-Type"] == "application/problem+json" and body["status"] == status
        return body, headers

    _, headers = problem(401, body=good)
    assert headers["WWW-Authenticate"] == 'Bearer realm="portal"'
    _, headers = problem(401, token="ptl_nope", body=good)
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    read_only = bearer_client(service_account, scopes=["read"]).raw_token
    time.sleep(0.5)
    problem(401, token=read_only, body=good)  # a token without the invoke scope is not a serving token
    problem(404, url=f"{gateway.url}/serve/development/nothing/v1/predict", token=token, body=good)
    problem(404, url=f"{gateway.url}/serve/development/iris-api/v7/predict", token=token, body=good)
    problem(404, url=f"{gateway.url}/serve/production/iris-api/v1/predict", token=token, body=good)
    # Refused from Content-Length alone, before the body is sent.
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    conn.putrequest("POST", "/serve/development/iris-api/v1/predict")
    conn.putheader("Authorization", f"Bearer {token}")
    conn.putheader("Content-Length", str(11 * 1024 * 1024))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and "at most" in json.loads(response.read())["detail"]
    conn.close()
    body, _ = problem(400, token=token, body=b"{not json")
    assert body["title"] == "Malformed JSON"
    problem(400, token=token, body={"rows": []})
    problem(400, token=token, body={"instances": []})
    body, _ = problem(422, token=token, body={"instances": [{"sepal_length": "long", "sepal_width": 1.0}]})
    fields = {(e["instance"], e["field"]) for e in body["errors"]}
    assert (0, "sepal_length") in fields and any("petal_length" in e["message"] for e in body["errors"])
    assert "instance 0 field sepal_length" in body["detail"]
    problem(405, url=base + "/predict", token=token, method="GET")

    code, payload, _ = call(base + "/predict", token=token, body=good)
    assert code == 200 and payload["predictions"] == [0, 1]


def test_a_missing_grant_is_403(live, gateway, outsider):
    token = bearer_client(outsider, scopes=["invoke"]).raw_token
    url = f"{gateway.url}/serve/development/iris-api/v1/predict"
    code, body, _ = eventually(
        lambda: (r := call(url, token=token, body={"instances": iris_instances(count=1)}))[0] != 401 and r
    )
    assert code == 403 and "oscar-outsider" in body["detail"]


def test_revoking_a_token_or_a_grant_takes_effect_at_once(live, gateway, service_account, owner):
    client = bearer_client(service_account, scopes=["invoke"])
    token = client.raw_token
    assert ready(gateway, token)
    url = f"{gateway.url}/serve/development/iris-api/v1/predict"
    body = {"instances": iris_instances(count=1)}

    grant = Grant.objects.get(user=service_account)
    revoked_at = time.monotonic()
    services.grant_revoke(actor=owner, grant=grant)
    assert eventually(lambda: call(url, token=token, body=body)[0] == 403, timeout=5)
    grant_delay = time.monotonic() - revoked_at

    services.grant_create(actor=owner, service=live.service, user=service_account)
    assert ready(gateway, token)
    from accounts.models import ApiToken

    revoked_at = time.monotonic()
    accounts.token_revoke(actor=service_account, token=ApiToken.objects.get(user=service_account))
    assert eventually(lambda: call(url, token=token, body=body)[0] == 401, timeout=5)
    token_delay = time.monotonic() - revoked_at
    print(f"grant revocation effective after {grant_delay:.2f} s, token revocation after {token_delay:.2f} s")


def test_no_live_instance_is_503(live, gateway, service_account):
    from deployments.runtime.local import LocalBackend

    token = bearer_client(service_account, scopes=["invoke"]).raw_token
    assert ready(gateway, token)
    backend = LocalBackend.default()
    for instance in live.instances.all():
        backend.stop(instance.name, drain_seconds=1)
    code, body, headers = call(
        f"{gateway.url}/serve/development/iris-api/v1/predict", token=token, body={"instances": iris_instances(count=1)}
    )
    assert code == 503 and headers["Retry-After"] == "2", body


def test_a_slow_model_is_504(iris_service, member, owner, environments, gateway_factory, service_account, tmp_path):
    from registry.models import RegisteredModel
    from tests.factories import make_version

    slow = tmp_path / "slow.py"
    slow.write_text("import time\ndef predict(instances):\n    time.sleep(3)\n    return [1 for _ in instances]\n")
    model = RegisteredModel.objects.get(name="iris")
    version = make_version(model, slow, version="1.1.0", flavor="pyfunc", instances=[{"x": 1}])
    deploy_now(iris_service, member, environments["development"], version)
    services.grant_create(actor=owner, service=iris_service, user=service_account)
    gateway = gateway_factory(GATEWAY_UPSTREAM_TIMEOUT="1")
    token = bearer_client(service_account, scopes=["invoke"]).raw_token
    url = f"{gateway.url}/serve/development/iris-api/v1/predict"
    code, body, _ = eventually(
        lambda: (r := call(url, token=token, body={"instances": [{"x": 1}]}))[0] not in (401, 403) and r
    )
    assert code == 504, body


def test_redis_outage_serves_from_the_last_snapshot_then_503(
    live, service_account, gateway_factory, tmp_path, settings
):
    from deployments import publish
    from scripts.stack import redis_start, stop
    from tests.support import port as free_port

    port = free_port()
    redis_proc = redis_start(port, tmp_path / "redis2", stdout=subprocess.DEVNULL)
    try:
        settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"
        token = bearer_client(service_account, scopes=["invoke"]).raw_token
        assert publish.publish() is not None
        gateway = gateway_factory(REDIS_URL=settings.REDIS_URL, GATEWAY_STALE_SECONDS="3")
        url = f"{gateway.url}/serve/development/iris-api/v1/predict"
        body = {"instances": iris_instances(count=1)}
        assert eventually(lambda: call(url, token=token, body=body)[0] == 200)
    finally:
        stop(redis_proc)
    # Redis is gone: the gateway keeps serving what it knew...
    assert call(url, token=token, body=body)[0] == 200
    # ...for a bounded time, then refuses to act on stale routes and grants (never a 500).
    code, problem, _ = eventually(lambda: (r := call(url, token=token, body=body))[0] != 200 and r, timeout=15)
    assert code == 503 and problem["title"] == "Routing unavailable"


def test_the_data_plane_imports_no_django():
    code = (
        "import sys, gateway.app, modelserver.server, modelserver.__main__; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'portal', 'accounts', 'deployments')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().replace("'", '"')) == []


def test_usage_is_recorded_and_charted(live, gateway, service_account, member):
    from django.test import Client

    from deployments import selectors

    token = bearer_client(service_account, scopes=["invoke"]).raw_token
    assert ready(gateway, token)
    time.sleep(1.5)  # let the gateway flush what it counted so far

    def totals():
        usage = selectors.service_usage(service=live.service)
        return usage, [sum(getattr(m, k) for m in usage) for k in ("requests", "errors", "rejected")]

    _, before = totals()
    url = f"{gateway.url}/serve/development/iris-api/v1/predict"
    for _ in range(5):
        assert call(url, token=token, body={"instances": iris_instances(count=1)})[0] == 200
    assert call(url, token=token, body={"instances": [{"sepal_length": "x"}]})[0] == 422

    def recorded():
        usage, now = totals()
        return now[2] - before[2] == 1 and (usage, now)

    usage, now = eventually(recorded, timeout=10)
    assert now[0] - before[0] == 6 and now[1] == before[1]
    latest = [m for m in usage if m.requests][-1]
    assert latest.percentile(0.5) is not None and latest.percentile(0.95) >= latest.percentile(0.5)
    client = Client()
    client.force_login(member)
    page = client.get("/services/iris-api/").content.decode()
    assert (
        f"{now[0]:,} requests · {now[1]:,} server errors · {now[2]:,} refused (4xx)" in page
        and "Requests per minute" in page
    )
