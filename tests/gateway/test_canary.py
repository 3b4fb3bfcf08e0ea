"""Canary routing in the gateway: a route's candidate (contract.Candidate) serves its share of the
requests, chosen per request from the snapshot, or per caller when sticky; percent 0 or no
candidate never reaches it; a candidate's failures reach its callers instead of being retried on
stable; every answer names the version that gave it. Real model servers, counted outcomes."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest

from core.net import http_request
from gateway import contract
from tests.gateway.harness import (
    CAST,
    CONSUMER,
    IRIS_MODEL,
    SETOSA,
    assert_problem,
    dead_url,
    digest,
    eventually,
    iris_route,
    start_model_server,
)

PREDICT = "/serve/development/iris/v1/predict"
INFO = "/serve/development/iris/v1"
KEY = "development/iris/v1"
STABLE, CANDIDATE = "1.2.0", "1.3.0"


@pytest.fixture(scope="module")
def candidate_server(models):
    """The same iris model, as version 1.3.0."""
    artifact = models / "iris-candidate.py"
    artifact.write_text(IRIS_MODEL)
    server = start_model_server(artifact, version=CANDIDATE, log=models / "iris-candidate.log")
    yield server
    server.stop()


def served(server) -> int:
    """How many predictions a model server has made since it started."""
    return json.loads(http_request(server.url, "/", timeout=5)[1])["served"]


def canary(instances, percent: float, **options) -> contract.Candidate:
    return contract.Candidate(deployment=8, version=CANDIDATE, instances=tuple(instances), percent=percent, **options)


def versions_of(gateway, calls: int, token: str = CONSUMER) -> Counter:
    """Which version answered each of `calls` predictions (all must succeed): the body's
    model_version and the X-Model-Version header agree."""
    seen: Counter = Counter()
    for _ in range(calls):
        response = gateway.request("POST", PREDICT, token=token, json={"instances": [SETOSA]})
        assert response.status == 200, response
        version = response.json()["model_version"]
        assert response.headers["x-model-version"] == version
        seen[version] += 1
    return seen


def test_a_canary_gets_its_share_of_the_requests_and_each_version_is_counted_apart(
    gateway, publish, snapshot, model_server, candidate_server
):
    publish(iris_route([model_server.url], candidate=canary([candidate_server.url], 20)))
    calls = 2000
    seen = versions_of(gateway, calls)
    assert set(seen) == {STABLE, CANDIDATE}
    # Binomial(2000, 0.2): mean 400, standard deviation about 18; five of them either side.
    assert 310 <= seen[CANDIDATE] <= 490, seen

    # The gateway's per-minute counts name the version that answered.
    def requests_by_version() -> Counter:
        counted: Counter = Counter()
        for key in snapshot.client.scan_iter(f"{contract.METRICS_KEY_PREFIX}*"):
            for name, value in snapshot.client.hgetall(key).items():
                series, kind = contract.parse_metric_field(name)
                if kind == contract.REQUESTS:
                    counted[series.version] += int(value)
        return counted

    counted = eventually(lambda: (c := requests_by_version()) and sum(c.values()) == calls and c, what="the flush")
    assert counted == seen


def test_percent_zero_or_no_candidate_never_reaches_it(gateway, publish, model_server, candidate_server):
    before = served(candidate_server)
    publish(iris_route([model_server.url], candidate=canary([candidate_server.url], 0)))
    assert versions_of(gateway, 300) == {STABLE: 300}
    publish(iris_route([model_server.url]))  # how a rollback publishes the route
    assert versions_of(gateway, 300) == {STABLE: 300}
    # A shadow candidate gets copies, never a caller's request: at 0 % not even those.
    publish(iris_route([model_server.url], candidate=canary([candidate_server.url], 0, mode=contract.SHADOW)))
    assert versions_of(gateway, 100) == {STABLE: 100}
    assert served(candidate_server) == before


def test_at_100_percent_every_request_and_the_info_url_go_to_the_candidate(
    gateway, publish, model_server, candidate_server
):
    publish(iris_route([model_server.url], candidate=canary([candidate_server.url], 100)))
    assert versions_of(gateway, 50) == {CANDIDATE: 50}
    info = gateway.request("GET", INFO, token=CONSUMER)
    assert info.status == 200 and info.json()["model_version"] == CANDIDATE


def test_a_sticky_caller_keeps_its_version(gateway, publish, model_server, candidate_server):
    callers = {
        f"ptl_caller_{n:03d}_invoke": contract.Token(user=100 + n, username=f"caller-{n}", expires=None)
        for n in range(120)
    }
    grants = {"iris": contract.Grant(users=frozenset(t.user for t in callers.values()))}
    route = iris_route([model_server.url], candidate=canary([candidate_server.url], 30, sticky=True))
    publish(route, tokens={**CAST, **callers}, grants=grants)
    on_candidate = set()
    for raw in callers:
        seen = versions_of(gateway, 4, token=raw)
        assert len(seen) == 1, f"{raw} saw {seen}"
        if CANDIDATE in seen:
            on_candidate.add(raw)
    # Exactly the callers whose hash falls under the share; about 30 % of them.
    assert on_candidate == {raw for raw in callers if contract.sticky_bucket(digest(raw), KEY) < 3000}
    assert 15 <= len(on_candidate) <= 60
    # A larger share keeps everyone who had the candidate on it.
    publish(
        dataclasses.replace(route, candidate=canary([candidate_server.url], 60, sticky=True)),
        tokens={**CAST, **callers},
        grants=grants,
    )
    for raw in on_candidate:
        assert versions_of(gateway, 1, token=raw) == {CANDIDATE: 1}


def test_a_failing_candidate_fails_its_share_and_is_not_retried_on_stable(
    gateway, publish, model_server, broken_model_server
):
    broken = contract.Candidate(deployment=8, version="1.2.0-broken", instances=(broken_model_server.url,), percent=50)
    publish(iris_route([model_server.url], candidate=broken))
    outcomes: Counter = Counter()
    for _ in range(400):
        response = gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": [SETOSA]})
        if response.status == 200:
            assert response.json()["model_version"] == STABLE
        else:
            assert_problem(response, 502, "The model failed")
            assert response.headers["x-model-version"] == "1.2.0-broken"  # the failure says whose it is
        outcomes[response.status] += 1
    # Binomial(400, 0.5): about 200 failures (standard deviation 10): every request the
    # candidate got failed, none of them was answered by stable instead.
    assert 140 <= outcomes[502] <= 260, outcomes
    assert set(outcomes) == {200, 502}


def test_a_candidate_that_refuses_connections_is_retried_only_on_its_own_instances(
    gateway, publish, model_server, candidate_server
):
    # One of the candidate's two instances is down: its requests go to the other.
    publish(iris_route([model_server.url], candidate=canary([dead_url(), candidate_server.url], 100)))
    assert versions_of(gateway, 20) == {CANDIDATE: 20}
    # None of them left: 503, never stable's answer.
    publish(iris_route([model_server.url], candidate=canary([dead_url()], 100)))
    for _ in range(5):
        assert_problem(gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": [SETOSA]}), 503)
