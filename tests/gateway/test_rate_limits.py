"""Rate limits and daily quotas per grant at the gateway (gateway/limits.py): a grant with a rate
gets 429 with Retry-After when it is exceeded and recovers after; a daily quota runs out and
says when it comes back; a grant without limits is never limited; a new limit applies from the
next snapshot; and two real gateway processes sharing one Redis together admit about the rate,
not twice it. Every refusal is application/problem+json."""

from __future__ import annotations

import http.client
import json
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis

from accounts import services as account_services
from accounts.models import TokenScope
from deployments import publish as dataplane
from deployments import services as deployment_services
from deployments.models import Grant
from gateway import contract
from tests.gateway.harness import CAST, CONSUMER, OUTSIDER, SETOSA, assert_problem, eventually, iris_route
from tests.support import start_gateway, stop

PREDICT = "/serve/development/iris/v1/predict"
INFO = "/serve/development/iris/v1"
CAROL = CAST[CONSUMER].user


@pytest.fixture(autouse=True)
def no_counts_left(redis_url):
    """Each test starts with no usage counted and no gateway marked on any grant's rate."""
    client = redis.Redis.from_url(redis_url)

    def clear():
        keys = [*client.scan_iter(f"{contract.USAGE_KEY_PREFIX}*"), *client.scan_iter(f"{contract.RATE_KEY_PREFIX}*")]
        if keys:
            client.delete(*keys)

    clear()
    yield client
    clear()
    client.close()


def limited(grant: int = 11, **limits) -> dict[str, contract.Grant]:
    """The consumer may call iris, under grant `grant` with these limits."""
    allowance = contract.Allowance(grant=grant, **limits)
    return {"iris": contract.Grant(users=frozenset({CAROL}), allowances={CAROL: allowance})}


def usage(client: redis.Redis, grant: int, *, refused: bool = False) -> int:
    day = contract.usage_key(contract.utc_day(time.time()))
    return int(client.hget(day, contract.usage_field("iris", grant, refused=refused)) or 0)


def test_a_grants_allowances_survive_the_contract_and_old_snapshots_still_read():
    team = contract.Allowance(grant=3, rate_per_second=2.5, burst=None, daily_quota=1000)
    grant = contract.Grant(
        users=frozenset({1, 2, 7}),
        allowances={1: team, 2: team, 7: contract.Allowance(grant=9)},
    )
    assert contract.Grant.decode(grant.encode()) == grant
    assert contract.Grant.decode(grant.encode().encode()) == grant
    # One entry per grant, however many callers share it.
    assert grant.encode().count("1000") == 1
    # What a control plane wrote before grants had limits: everyone may call, nobody is limited.
    assert contract.Grant.decode("[2,1]") == contract.Grant(users=frozenset({1, 2}))
    assert contract.Grant(users=frozenset({2, 1})).encode() == "[1,2]"
    # The bucket holds the burst, or one second of the rate, and never less than one request.
    assert team.capacity == 2.5 and contract.Allowance(grant=1, rate_per_second=0.2).capacity == 1.0
    assert contract.Allowance(grant=1, rate_per_second=5, burst=10).capacity == 10.0


def test_a_rate_limit_answers_429_with_retry_after_and_recovers(gateway, publish, model_server, no_counts_left):
    publish(iris_route([model_server.url]), grants=limited(rate_per_second=1, burst=3))
    statuses = []
    for _ in range(20):
        response = gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": [SETOSA]})
        statuses.append(response.status)
        if response.status == 429:
            break
    # The burst passes at once; the bucket refills at one a second, far slower than we ask.
    assert statuses[:3] == [200, 200, 200] and statuses[-1] == 429, statuses
    assert len(statuses) <= 5, statuses
    problem = assert_problem(response, 429, "Rate limit exceeded")
    assert problem["detail"].startswith("Rate limit of 1 requests per second (burst 3) for this service exceeded")
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= 2
    assert response.headers["ratelimit-limit"] == "3" and response.headers["ratelimit-remaining"] == "0"
    assert response.headers["ratelimit-reset"] == response.headers["retry-after"]
    time.sleep(retry_after)
    again = gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": [SETOSA]})
    assert again.status == 200, again
    # The day's counts reach Redis, for the service page.
    eventually(lambda: usage(no_counts_left, 11) == statuses.count(200) + 1, what="the admitted count")
    assert usage(no_counts_left, 11, refused=True) == 1


def test_a_daily_quota_runs_out_and_says_when_it_resets(gateway, publish, model_server, no_counts_left):
    publish(iris_route([model_server.url]), grants=limited(grant=12, daily_quota=3))
    for _ in range(3):
        assert gateway.request("GET", INFO, token=CONSUMER).status == 200
    # The quota is counted in Redis for every gateway: wait for this one's count to be there.
    eventually(lambda: usage(no_counts_left, 12) == 3, what="the day's count")
    response = gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": [SETOSA]})
    problem = assert_problem(response, 429, "Daily quota used up")
    assert problem["detail"] == "Daily quota of 3 requests used up; it resets at 00:00 UTC."
    now = datetime.now(UTC)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    assert abs(int(response.headers["retry-after"]) - (midnight - now).total_seconds()) < 5
    assert response.headers["ratelimit-limit"] == "3"
    # Refusals are counted for the day too.
    eventually(lambda: usage(no_counts_left, 12, refused=True) == 1, what="the refused count")


def test_a_grant_without_limits_is_never_limited(gateway, publish, model_server, no_counts_left):
    unlimited = {"iris": contract.Grant(users=frozenset({CAROL}), allowances={CAROL: contract.Allowance(grant=13)})}
    publish(iris_route([model_server.url]), grants=unlimited)
    statuses = {gateway.request("GET", INFO, token=CONSUMER).status for _ in range(300)}
    assert statuses == {200}
    # Counted all the same, for the usage page.
    eventually(lambda: usage(no_counts_left, 13) == 300, what="the count of an unlimited grant")
    # A snapshot from before grants had limits (a plain list of user ids): nobody limited.
    publish(iris_route([model_server.url]), grants={"iris": contract.Grant(users=frozenset({CAROL}))})
    assert {gateway.request("GET", INFO, token=CONSUMER).status for _ in range(100)} == {200}


def test_a_new_limit_applies_from_the_next_snapshot(gateway, publish, model_server):
    route = iris_route([model_server.url])
    publish(route, grants=limited(grant=14))
    assert {gateway.request("GET", INFO, token=CONSUMER).status for _ in range(30)} == {200}
    publish(route, grants=limited(grant=14, rate_per_second=0.1, burst=2))
    statuses = [gateway.request("GET", INFO, token=CONSUMER).status for _ in range(4)]
    assert statuses.count(429) >= 2, statuses
    publish(route, grants=limited(grant=14, rate_per_second=1000, burst=1000))
    statuses = [gateway.request("GET", INFO, token=CONSUMER).status for _ in range(30)]
    # The bucket refills at the new rate from the level it had: at most the first is refused.
    assert statuses[1:] == [200] * 29, statuses


def test_refusals_before_the_limit_are_not_counted_against_it(gateway, publish, model_server):
    publish(iris_route([model_server.url]), grants=limited(grant=15, rate_per_second=0.01, burst=1))
    # No grant: 403 before any limit is looked at; the consumer's one request still passes.
    assert gateway.request("GET", INFO, token=OUTSIDER).status == 403
    assert gateway.request("GET", INFO, token=CONSUMER).status == 200
    assert gateway.request("GET", INFO, token=CONSUMER).status == 429


# ---------------------------------------------------------------- two real gateway processes


def _hammer(url: str, seconds: float, counts: dict[int, int], lock: threading.Lock) -> None:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    headers = {"Authorization": f"Bearer {CONSUMER}"}
    mine: dict[int, int] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        connection.request("GET", INFO, headers=headers)
        response = connection.getresponse()
        response.read()
        mine[response.status] = mine.get(response.status, 0) + 1
    connection.close()
    with lock:
        for status, n in mine.items():
            counts[status] = counts.get(status, 0) + n


def test_two_gateways_together_stay_within_the_rate(gateway_redis_url, snapshot, model_server, tmp_path):
    rate, burst = 40, 10
    generation = snapshot.publish(
        [iris_route([model_server.url])], tokens=CAST, grants=limited(grant=16, rate_per_second=rate, burst=burst)
    )
    gateways = [start_gateway(gateway_redis_url, tmp_path / f"gateway-{n}.log") for n in range(2)]
    try:
        for proc in gateways:
            eventually(lambda proc=proc: _generation(proc.url) >= generation, what="the gateway loading the snapshot")
        counts: dict[int, int] = {}
        lock = threading.Lock()
        seconds = 4.0
        threads = [
            threading.Thread(target=_hammer, args=(proc.url, seconds, counts, lock))
            for proc in gateways
            for _client in (0, 1)
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
    finally:
        for proc in gateways:
            stop(proc)
    allowed = counts.get(200, 0)
    ceiling = rate * elapsed + burst
    assert set(counts) <= {200, 429}, counts
    # Both gateways were asked far more than the rate, so both refused.
    assert counts.get(429, 0) > allowed, counts
    # Together they admitted about the rate over the run (one gateway alone would admit it twice).
    print(f"admitted {allowed} in {elapsed:.2f} s at {rate}/s, burst {burst}: ceiling {ceiling:.0f}", counts)
    assert allowed <= 1.1 * ceiling, (counts, elapsed)
    assert allowed >= 0.7 * rate * elapsed, (counts, elapsed)


def _generation(url: str) -> int:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=2)
    try:
        connection.request("GET", "/health")
        return json.loads(connection.getresponse().read())["generation"]
    finally:
        connection.close()


# ---------------------------------------------------------------- from the portal's grant to the gateway and back


@pytest.fixture
def consumer_token(outsider):
    """The outsider's token with the invoke scope: the consumer in these tests."""
    _token, secret = account_services.token_create(actor=None, user=outsider, name="calls", scopes=[TokenScope.INVOKE])
    return secret


def test_the_portal_publishes_a_grants_limits_and_shows_its_usage(
    db, iris_service, owner, outsider, consumer_token, gateway, snapshot, model_server, api, client, no_counts_left
):
    predict, info = "/serve/development/iris-api/v1/predict", "/serve/development/iris-api/v1"
    snapshot.publish([iris_route([model_server.url], service="iris-api")])
    grant = deployment_services.grant_create(actor=owner, service=iris_service, user=outsider)
    Grant.objects.filter(pk=grant.pk).update(rate_per_second=0.5, burst=2, daily_quota=1000)
    gateway.wait_for_generation(dataplane.publish(dataplane.KEY_GRANTS, dataplane.KEY_TOKENS))

    statuses = [gateway.request("POST", predict, token=consumer_token, json={"instances": [SETOSA]}).status]
    statuses += [gateway.request("GET", info, token=consumer_token).status for _ in range(3)]
    assert statuses[:2] == [200, 200] and 429 in statuses[2:], statuses
    refused = gateway.request("GET", info, token=consumer_token)
    problem = assert_problem(refused, 429, "Rate limit exceeded")
    assert "Rate limit of 0.5 requests per second (burst 2) for this service exceeded" in problem["detail"]

    # The team lifts the rate: the next snapshot lets every request through.
    Grant.objects.filter(pk=grant.pk).update(rate_per_second=None, burst=None)
    gateway.wait_for_generation(dataplane.publish(dataplane.KEY_GRANTS))
    assert {gateway.request("GET", info, token=consumer_token).status for _ in range(20)} == {200}

    admitted = statuses.count(200) + 20
    answer = eventually(
        lambda: (
            (r := api(owner).get("/api/v1/services/iris-api/usage")).json()["consumers"][-1]["requests_today"]
            == admitted
            and r
        ),
        what="the usage API counting the consumer's requests",
    )
    assert answer.status_code == 200
    body = answer.json()
    assert body["service"] == "iris-api" and body["resets_at"].endswith("T00:00:00Z")
    owners_grant, consumer = body["consumers"]
    assert owners_grant["team"] == iris_service.team.name and owners_grant["requests_today"] == 0
    assert consumer == {
        "grant": grant.pk,
        "user": outsider.username,
        "team": None,
        "requests_today": admitted,
        "refused_today": statuses.count(429) + 1,
        "daily_quota": 1000,
        "quota_remaining": 1000 - admitted,
        "rate_per_second": None,
        "burst": None,
    }
    # Who may not see the service gets a 404, like every other page of it.
    assert api(outsider).get("/api/v1/services/iris-api/usage").status_code == 404
    assert api(owner).get("/api/v1/services/no-such/usage").status_code == 404

    client.force_login(owner)
    page = client.get("/services/iris-api/").content.decode()
    assert "Usage per consumer today" in page
    row = page[page.index(f'<th scope="row">{outsider.username}</th>') :].split("</tr>")[0]
    assert f"<td>{admitted}</td>" in row and "1,000" in row


def test_the_portal_publishes_which_grant_each_caller_counts_against(
    db, iris_service, owner, member, outsider, redis_url
):
    team_grant = Grant.objects.get(service=iris_service, team=iris_service.team)
    Grant.objects.filter(pk=team_grant.pk).update(rate_per_second=1, burst=4)
    own = deployment_services.grant_create(actor=owner, service=iris_service, user=member)
    Grant.objects.filter(pk=own.pk).update(daily_quota=5)
    dataplane.publish(dataplane.KEY_GRANTS)
    published = contract.Grant.decode(redis.Redis.from_url(redis_url).hget(contract.KEY_GRANTS, "iris-api"))
    # The team's members share the team's grant; a member with a grant of their own counts against it.
    assert published.allowances[owner.pk] == contract.Allowance(grant=team_grant.pk, rate_per_second=1, burst=4)
    assert published.allowances[member.pk] == contract.Allowance(grant=own.pk, daily_quota=5)
    assert outsider.pk not in published.users and outsider.pk not in published.allowances
