"""What the control plane publishes reaches real gateway processes: routes, grants and their
revocation, token revocation; and what gateways count comes back as the service's usage.

The gateway's own answers (each error case, outages of Redis, the contract) are tested
without the control plane in tests/gateway/."""

import time

import pytest

from accounts import services as accounts
from deployments import services
from deployments.models import Grant
from portal.demo_models import iris_instances
from tests.factories import bearer_client, deploy_now
from tests.support import call, eventually

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


def test_a_services_cap_on_instances_reaches_the_gateway(live, gateway, service_account, owner):
    token = bearer_client(service_account, scopes=["invoke"]).raw_token
    assert ready(gateway, token)
    url = f"{gateway.url}/serve/development/iris-api/v1/predict"
    three = {"instances": iris_instances(count=3)}
    assert call(url, token=token, body=three)[0] == 200
    services.service_update(actor=owner, service=live.service, max_instances=2)
    _, problem, _ = eventually(lambda: (r := call(url, token=token, body=three))[0] == 413 and r, timeout=5)
    assert problem["title"] == "Too many instances" and problem["max_instances"] == 2
