"""How the gateway follows Redis: it picks up each new snapshot generation, reports the one it
loaded in its heartbeat, keeps serving the last snapshot through a short Redis outage and refuses
(503) once it is too old to trust, and counts requests per minute into Redis."""

from __future__ import annotations

import time
from collections import Counter, defaultdict

import pytest

from gateway import contract
from tests.gateway.harness import (
    CAST,
    CONSUMER,
    OUTSIDER,
    SETOSA,
    Gateways,
    RedisServer,
    SnapshotWriter,
    assert_problem,
    digest,
    eventually,
    iris_route,
)
from tests.ports import port as free_port

PREDICT = "/serve/development/iris/v1/predict"
BODY = {"instances": [SETOSA]}


def status_of(gateway, token=CONSUMER, path=PREDICT) -> int:
    return gateway.request("POST", path, token=token, json=BODY).status


# ---------------------------------------------------------------- following the snapshot


def test_a_route_published_after_startup_starts_answering(gateway, snapshot, model_server):
    assert gateway.app.state.snapshot.routes == {}
    assert status_of(gateway) == 401  # an empty snapshot knows no token either
    snapshot.publish([iris_route([model_server.url])], tokens=CAST, grants={"iris": contract.Grant(frozenset({1}))})
    eventually(lambda: status_of(gateway) == 200, what="the new route answering")


def test_a_token_removed_from_the_snapshot_stops_working(gateway, publish, model_server):
    route = iris_route([model_server.url])
    publish(route)
    assert status_of(gateway) == 200
    # As when a token is revoked: the next publish no longer lists it.
    publish(route, tokens={OUTSIDER: CAST[OUTSIDER]})
    eventually(lambda: status_of(gateway) == 401, what="the removed token being refused")


def test_a_grant_removed_from_the_snapshot_stops_working(gateway, publish, model_server):
    route = iris_route([model_server.url])
    publish(route)
    assert status_of(gateway) == 200
    publish(route, grants={"iris": contract.Grant(frozenset())})
    eventually(lambda: status_of(gateway) == 403, what="the revoked grant being refused")


def test_a_token_expires_without_a_new_snapshot(gateway, publish, model_server):
    expiring = contract.Token(user=1, username="carol-consumer", expires=time.time() + 2)
    publish(iris_route([model_server.url]), tokens={CONSUMER: expiring})
    assert status_of(gateway) == 200
    eventually(lambda: status_of(gateway) == 401, what="the token expiring")


def test_a_new_version_replaces_the_old_one(gateway, publish, model_server):
    publish(iris_route([model_server.url]))
    publish(iris_route([model_server.url], version="1.3.0", deployment=8))
    info = gateway.request("GET", "/serve/development/iris/v1", token=CONSUMER)
    assert info.status == 200 and info.json()["model_version"] == "1.3.0"


# ---------------------------------------------------------------- heartbeat and health


def test_the_heartbeat_reports_the_loaded_generation(gateway, gateways, publish, snapshot, model_server):
    generation = publish(iris_route([model_server.url]))

    def heartbeats():
        return [contract.Heartbeat.decode(raw) for raw in snapshot.client.hgetall(contract.KEY_GATEWAYS).values()]

    beat = eventually(
        lambda: [b for b in heartbeats() if b.generation == generation], what="a heartbeat of the new generation"
    )
    assert len(beat) == 1
    # A gateway that leaves takes its heartbeat with it: rollouts must not wait for it.
    gateways.stop_all()
    assert heartbeats() == []


def test_health_is_ok_while_redis_answers(gateway, publish):
    generation = publish()
    response = gateway.request("GET", "/health")
    assert response.status == 200 and response.headers["content-type"] == "application/json"
    assert response.json() == {"status": "ok", "generation": generation}


@pytest.fixture
def own_redis(tmp_path):
    """A Redis of this test's own, which the test may stop and start again."""
    server = RedisServer(free_port(), tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def test_a_redis_outage_serves_the_last_snapshot_then_503(own_redis, model_server):
    writer = SnapshotWriter(own_redis.url)
    gateways = Gateways(own_redis.url)
    try:
        gateway = gateways.start(stale_after=1.5)
        generation = writer.publish(
            [iris_route([model_server.url])], tokens=CAST, grants={"iris": contract.Grant(frozenset({1}))}
        )
        gateway.wait_for_generation(generation)
        assert status_of(gateway) == 200

        own_redis.stop()
        # What it knew keeps serving for a while (stale_after)...
        assert status_of(gateway) == 200
        # ...and then it refuses to act on routes and grants it can no longer check.
        stale = eventually(
            lambda: (r := gateway.request("POST", PREDICT, token=CONSUMER, json=BODY)).status != 200 and r
        )
        problem = assert_problem(stale, 503, "Routing unavailable")
        assert stale.headers["retry-after"] == "5" and "Try again shortly" in problem["detail"]
        health = gateway.request("GET", "/health")
        assert health.status == 503 and health.json() == {"status": "stale", "generation": generation}

        # Redis comes back empty (it keeps nothing on disk). The gateway trusts what it holds
        # now, an empty snapshot, so every caller is refused until the control plane publishes.
        own_redis.start()
        eventually(lambda: gateway.request("GET", "/health").status == 200, timeout=20, what="health recovering")
        eventually(lambda: status_of(gateway) == 401, what="the empty snapshot being loaded")
        writer.publish([iris_route([model_server.url])], tokens=CAST, grants={"iris": contract.Grant(frozenset({1}))})
        eventually(lambda: status_of(gateway) == 200, what="serving resuming")
    finally:
        gateways.stop_all()
        writer.close()


def nested(depth: int) -> dict:
    schema: dict = {"type": "number"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


def test_unusable_entries_are_skipped_and_the_rest_of_the_snapshot_applies(gateway, snapshot, model_server):
    """One malformed or hostile entry costs only itself: every other route, token and grant of
    the same generation is served (a schema nested 600 deep once stopped every update)."""
    good = iris_route([model_server.url])
    deep = iris_route([model_server.url], service="deep", input_schema=nested(600))
    # Deeper than Python's own JSON encoder goes: written as text, as a hostile writer would.
    deep_output = iris_route([model_server.url], service="wide").encode()
    deep_output = deep_output.replace(
        '"output_schema":{', '"output_schema":' + '{"items":' * 5000 + "{" + "}" * 5000, 1
    )
    # Schemas only a backtracking engine evaluates (the registry refuses them).
    unservable = [
        iris_route([model_server.url], service="lookahead", input_schema={"type": "string", "pattern": "(?=a)a"}),
        iris_route([model_server.url], service="names", input_schema={"patternProperties": {"^(a+)+$": {}}}),
    ]
    generation = snapshot.write(
        {
            contract.KEY_ROUTES: {
                good.key: good.encode(),
                deep.key: deep.encode(),
                "development/wide/v1": deep_output,
                "development/broken/v1": '{"deployment": 9}',
                **{route.key: route.encode() for route in unservable},
                "development/garbage/v1": "not json",
            },
            contract.KEY_TOKENS: {digest(CONSUMER): CAST[CONSUMER].encode(), "0" * 64: "{}", "1" * 64: "[1, 2"},
            contract.KEY_GRANTS: {"iris": contract.Grant(frozenset({CAST[CONSUMER].user})).encode(), "x": '"a"'},
        }
    )
    eventually(lambda: gateway.app.state.snapshot.generation == generation, what="the generation being loaded")
    assert set(gateway.app.state.snapshot.routes) == {good.key}
    assert status_of(gateway) == 200
    for service in ("deep", "wide", "broken", "garbage", "lookahead", "names"):
        response = gateway.request("POST", f"/serve/development/{service}/v1/predict", token=CONSUMER, json=BODY)
        assert_problem(response, 404, "No such service")
    health = gateway.request("GET", "/health")
    assert health.status == 200 and health.json() == {"status": "ok", "generation": generation}


def test_a_revocation_applies_even_beside_an_unusable_route(gateway_factory, publish, snapshot, model_server):
    gateway = gateway_factory(stale_after=1.0)
    route = iris_route([model_server.url])
    publish(route)
    assert status_of(gateway) == 200
    # The next generation revokes the consumer's token and carries a route this gateway cannot
    # decode (as one in a newer control plane's format would be): the revocation takes effect.
    snapshot.write(
        {
            contract.KEY_ROUTES: {route.key: route.encode(), "development/other/v1": '{"deployment": 9}'},
            contract.KEY_TOKENS: {},
            contract.KEY_GRANTS: {"iris": contract.Grant(frozenset({1})).encode()},
        }
    )
    eventually(lambda: status_of(gateway) == 401, timeout=3, what="the revoked token being refused")


def test_a_snapshot_it_cannot_load_makes_the_gateway_stale_not_trusting(
    gateway_factory, publish, snapshot, model_server
):
    """Contact with Redis counts only when it leaves a current snapshot in memory: a gateway that
    cannot load what Redis holds goes stale (503, and /health 503 so a load balancer takes it
    out) instead of serving revoked grants for ever."""
    gateway = gateway_factory(stale_after=1.0)
    publish(iris_route([model_server.url]))
    assert status_of(gateway) == 200
    generation = snapshot.client.get(contract.KEY_GENERATION)
    snapshot.client.set(contract.KEY_GENERATION, "not a generation")
    try:
        problem = eventually(
            lambda: (r := gateway.request("POST", PREDICT, token=CONSUMER, json=BODY)).status == 503 and r,
            timeout=5,
            what="the gateway going stale",
        )
        assert_problem(problem, 503, "Routing unavailable")
        health = gateway.request("GET", "/health")
        assert health.status == 503 and health.json()["status"] == "stale"
    finally:
        snapshot.client.set(contract.KEY_GENERATION, generation)
    publish(iris_route([model_server.url]))
    eventually(lambda: status_of(gateway) == 200, what="the gateway trusting Redis again")


# ---------------------------------------------------------------- metrics


def test_requests_are_counted_per_minute_series_and_kind(gateway, publish, snapshot, model_server):
    publish(iris_route([model_server.url]), iris_route([], major=2, version="2.0.0"))
    first = time.time()
    for _ in range(4):
        assert status_of(gateway) == 200
    assert gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": [{"sepal_length": "x"}]}).status == 422
    assert status_of(gateway, token=OUTSIDER) == 403
    assert status_of(gateway, path="/serve/development/iris/v2/predict") == 503
    assert status_of(gateway, token="ptl_unknown") == 401  # no known caller: not counted
    last = time.time()
    # The requests may straddle a minute: read every minute they were made in.
    minutes = {contract.minute_key(first), contract.minute_key(last)}

    def counts() -> Counter:
        counted: Counter = Counter()
        for minute in minutes:
            for name, value in snapshot.client.hgetall(minute).items():
                counted[contract.parse_metric_field(name)] += int(value)
        return counted

    # Flushed about once a second: wait until all 7 counted requests are in.
    counted = eventually(
        lambda: (c := counts()) and sum(v for (_, kind), v in c.items() if kind == contract.REQUESTS) == 7 and c,
        what="the counts being flushed",
    )
    kinds: dict[contract.Series, dict[str, int]] = defaultdict(dict)
    for (series, kind), value in counted.items():
        kinds[series][kind] = value
    carol = contract.Series("development", "iris", 1, "1.2.0", "carol-consumer")
    oscar = contract.Series("development", "iris", 1, "1.2.0", "oscar-outsider")
    v2 = contract.Series("development", "iris", 2, "2.0.0", "carol-consumer")
    assert set(kinds) == {carol, oscar, v2}, "only callers the gateway knows are counted"

    buckets = {f"{contract.BUCKET}{n}" for n in range(len(contract.BUCKETS_MS) + 1)}
    totals = {series: {k: v for k, v in kinds[series].items() if k not in buckets} for series in kinds}
    assert totals == {
        carol: {contract.REQUESTS: 5, contract.CLIENT_ERRORS: 1},
        oscar: {contract.REQUESTS: 1, contract.CLIENT_ERRORS: 1},
        v2: {contract.REQUESTS: 1, contract.SERVER_ERRORS: 1},
    }
    # Every request falls in exactly one latency bucket, and nothing else is counted.
    for series, requests in ((carol, 5), (oscar, 1), (v2, 1)):
        assert set(kinds[series]) <= buckets | set(totals[series])
        assert sum(v for k, v in kinds[series].items() if k in buckets) == requests
    for minute in minutes:
        assert 0 < snapshot.client.ttl(minute) <= contract.METRICS_RETENTION_SECONDS
