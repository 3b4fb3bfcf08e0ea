"""Shadow copies in the gateway: after a caller has stable's answer, a share of the requests is
copied to the shadow candidate in the background; the caller's answer never changes; the
candidate's answers are compared with stable's and counted (shadow_* kinds, under the
candidate's version), disagreeing examples kept in Redis; copies beyond the gateway's bound
are dropped and counted. Real model servers; counts, no timing."""

from __future__ import annotations

import json
import socket
import time
from collections import Counter

import pytest

from gateway import contract
from tests.gateway.harness import (
    CONSUMER,
    IRIS_MODEL,
    SETOSA,
    VERSICOLOR,
    eventually,
    iris_route,
    start_model_server,
)
from tests.ports import port as free_port

PREDICT = "/serve/development/iris/v1/predict"
STABLE, CANDIDATE = "1.2.0", "1.3.0"


def _server(models, name: str, source: str):
    artifact = models / f"{name}.py"
    artifact.write_text(source)
    server = start_model_server(artifact, version=CANDIDATE, log=models / f"{name}.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def agreeing_server(models):
    """The same iris model, as version 1.3.0."""
    yield from _server(models, "shadow-same", IRIS_MODEL)


@pytest.fixture(scope="module")
def disagreeing_server(models):
    """Version 1.3.0 of a model that calls everything versicolor."""
    yield from _server(
        models, "shadow-versicolor", "def predict(instances):\n    return ['versicolor'] * len(instances)\n"
    )


@pytest.fixture
def silent_url():
    """An instance that takes connections and never answers: copies sent there stay in flight."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", free_port()))
    listener.listen(64)  # never accepted: the kernel completes the connections, nobody reads
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def shadow(instances, percent: float = 100) -> contract.Candidate:
    return contract.Candidate(
        deployment=9, version=CANDIDATE, instances=tuple(instances), percent=percent, mode=contract.SHADOW
    )


def counts(snapshot, version: str = CANDIDATE) -> Counter:
    """Every count of `version` in every minute kept (shadow latency buckets summed as 'sb')."""
    counted: Counter = Counter()
    for key in snapshot.client.scan_iter(f"{contract.METRICS_KEY_PREFIX}*"):
        for name, value in snapshot.client.hgetall(key).items():
            series, kind = contract.parse_metric_field(name)
            if series.version == version:
                counted[contract.SHADOW_BUCKET if kind.startswith(contract.SHADOW_BUCKET) else kind] += int(value)
    return counted


def ask(gateway, instance, calls: int) -> None:
    """`calls` predictions of one instance: every caller gets stable's answer."""
    expected = "setosa" if instance is SETOSA else "versicolor"
    for _ in range(calls):
        response = gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": [instance]})
        assert response.status == 200, response
        answer = response.json()
        assert (answer["predictions"], answer["model_version"]) == ([expected], STABLE)
        assert response.headers["x-model-version"] == STABLE


@pytest.fixture
def gateway(gateway_factory):
    """A gateway that never has to drop a copy in these tests (one that does is tested apart)."""
    return gateway_factory(shadow_concurrency=1000)


def test_shadow_never_changes_a_callers_answer_and_disagreements_are_kept(
    gateway, publish, snapshot, model_server, disagreeing_server
):
    examples_key = contract.shadow_examples_key(9)
    snapshot.client.delete(examples_key, contract.KEY_PREDICTIONS)
    logged = contract.Logging(sample_rate=1.0, payloads=True)
    publish(iris_route([model_server.url], candidate=shadow([disagreeing_server.url]), logging=logged))
    ask(gateway, SETOSA, 30)  # the candidate says versicolor to each
    ask(gateway, VERSICOLOR, 10)  # ... and agrees on these
    expected = {
        contract.SHADOW_REQUESTS: 40,
        contract.SHADOW_DISAGREE: 30,
        contract.SHADOW_AGREE: 10,
        contract.SHADOW_BUCKET: 40,
    }
    eventually(lambda: counts(snapshot) == expected, what=f"the shadow counts {expected}")
    # The callers' own requests count for stable only.
    assert counts(snapshot, STABLE)[contract.REQUESTS] == 40
    # The latest 20 disagreements are kept, each with the input and both answers.
    examples = eventually(
        lambda: snapshot.client.llen(examples_key) == 20 and snapshot.client.lrange(examples_key, 0, -1)
    )
    for raw in examples:
        example = contract.ShadowExample.decode(raw)
        assert (example.instances, example.stable, example.candidate) == ([SETOSA], ["setosa"], ["versicolor"])

    # Only what callers got is logged: 40 predictions, all of them stable's.
    def logged_records():
        return [
            r for _, entry in snapshot.client.xrange(contract.KEY_PREDICTIONS) for r in json.loads(entry[b"records"])
        ]

    records = eventually(lambda: len(r := logged_records()) >= 40 and r, what="the prediction log")
    assert len(records) == 40 and {r[5] for r in records} == {STABLE}


def test_a_share_of_requests_is_copied(gateway, publish, snapshot, model_server, agreeing_server):
    publish(iris_route([model_server.url], candidate=shadow([agreeing_server.url], percent=25)))
    ask(gateway, SETOSA, 400)
    # Binomial(400, 0.25): about 100 copies (standard deviation under 9), all agreeing. Copies
    # still travel after the last answer: read the counts once none is in flight and a flush
    # later they have not moved.
    assert eventually(lambda: gateway.app._shadows_in_flight == 0, what="the copies sent")

    def settled():
        first = counts(snapshot)
        time.sleep(2 * gateway.app.metrics.flush_interval)
        second = counts(snapshot)
        return first == second and second[contract.SHADOW_REQUESTS] > 0 and second

    counted = eventually(settled, timeout=30, what="the copies counted")
    assert 55 <= counted[contract.SHADOW_REQUESTS] <= 145, counted
    assert counted[contract.SHADOW_AGREE] == counted[contract.SHADOW_REQUESTS]
    assert counted[contract.SHADOW_DISAGREE] == counted[contract.SHADOW_ERRORS] == counted[contract.REQUESTS] == 0


def test_a_failing_shadow_counts_errors_and_callers_see_nothing(
    gateway, publish, snapshot, model_server, broken_model_server
):
    snapshot.client.delete(contract.shadow_examples_key(9))
    publish(iris_route([model_server.url], candidate=shadow([broken_model_server.url])))
    ask(gateway, SETOSA, 20)
    expected = {contract.SHADOW_REQUESTS: 20, contract.SHADOW_ERRORS: 20, contract.SHADOW_BUCKET: 20}
    assert eventually(lambda: counts(snapshot, "1.3.0") == expected and expected, what="the shadow errors")
    assert not snapshot.client.exists(contract.shadow_examples_key(9))


def test_copies_beyond_the_bound_are_dropped_and_counted(gateway_factory, publish, snapshot, model_server, silent_url):
    gateway = gateway_factory(shadow_concurrency=3, upstream_timeout=60)
    publish(iris_route([model_server.url], candidate=shadow([silent_url])))
    ask(gateway, SETOSA, 12)  # every caller answered while 3 copies wait on a silent candidate
    assert gateway.app._shadows_in_flight == 3
    assert eventually(lambda: counts(snapshot) == {contract.SHADOW_DROPPED: 9} and True, what="the drops counted")
