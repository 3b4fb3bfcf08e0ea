"""Fixtures for the gateway on its own: the ASGI app in-process on the session's real Redis, a
hand-written snapshot, and real model-server processes as upstreams. No database, no Django.

The helpers these fixtures use live in tests/gateway/harness.py, which tests import directly.
"""

from __future__ import annotations

import pytest

from gateway import contract
from tests.gateway.harness import (
    CAST,
    CONSUMER,
    IRIS_MODEL,
    GatewayHarness,
    Gateways,
    ModelServer,
    SnapshotWriter,
    start_model_server,
)


@pytest.fixture
def snapshot(redis_url):
    """Writes snapshots to the session's Redis. Each test starts from an empty one, with no
    metrics and no gateway heartbeats left by an earlier test."""
    writer = SnapshotWriter(redis_url)
    writer.clear()
    yield writer
    writer.close()


@pytest.fixture
def gateways(gateway_redis_url, snapshot):
    """`gateways.start(**options)` starts a gateway through the ASGI lifespan on the session's
    Redis, as the gateways' own Redis user (it may only read the snapshot and write heartbeats
    and counts), with test-sized options (any Gateway argument may be changed); all are shut
    down through the lifespan after the test."""
    gateways = Gateways(gateway_redis_url)
    yield gateways
    gateways.stop_all()


@pytest.fixture
def gateway_factory(gateways):
    """`gateway_factory(**options)`: a gateway with other options than the default one."""
    return gateways.start


@pytest.fixture
def gateway(gateways) -> GatewayHarness:
    """A gateway with the test defaults (polls every 50 ms, 1 MiB bodies, 10 s upstream limit)."""
    return gateways.start()


@pytest.fixture
def publish(gateways, snapshot):
    """`publish(*routes, tokens=..., grants=...)` writes a snapshot and waits until every gateway
    the test started serves it. By default the cast's tokens are in it and only the consumer is
    granted each route's service (the outsider holds a valid token but no grant)."""

    def publish_and_wait(*routes: contract.Route, tokens=None, grants=None) -> int:
        if grants is None:
            grants = {route.service: contract.Grant(users=frozenset({CAST[CONSUMER].user})) for route in routes}
        generation = snapshot.publish(routes, tokens=CAST if tokens is None else tokens, grants=grants)
        gateways.wait_for_generation(generation)
        return generation

    return publish_and_wait


# ---------------------------------------------------------------- model servers
#
# One process each per test session (per xdist worker): they keep no state between requests.


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """Where the session's model artifacts and model-server logs are written."""
    return tmp_path_factory.mktemp("gateway-models")


def _serve(models, name: str, source: str):
    artifact = models / f"{name}.py"
    artifact.write_text(source)
    server = start_model_server(artifact, version="1.2.0", log=models / f"{name}.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def model_server(models) -> ModelServer:
    """The iris toy model at version 1.2.0."""
    yield from _serve(models, "iris", IRIS_MODEL)


@pytest.fixture(scope="session")
def slow_model_server(models) -> ModelServer:
    """A model that takes 3 s per prediction (and, predicting synchronously, blocks meanwhile)."""
    yield from _serve(
        models, "slow", "import time\n\n\ndef predict(instances):\n    time.sleep(3)\n    return [1] * len(instances)\n"
    )


@pytest.fixture(scope="session")
def broken_model_server(models) -> ModelServer:
    """A model whose predict() raises: the model server answers 500 with the reason."""
    yield from _serve(
        models, "broken", "def predict(instances):\n    raise RuntimeError('the weights file is corrupt')\n"
    )


@pytest.fixture(scope="session")
def refusing_model_server(models) -> ModelServer:
    """A model that gives no prediction per instance: the model server refuses with 422."""
    yield from _serve(models, "refusing", "def predict(instances):\n    return []\n")
