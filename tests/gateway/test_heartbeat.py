"""A gateway's heartbeat names a generation only once that snapshot is the one requests are
served from: the control plane waits on heartbeats before it says a version is live or a grant
is in force, so a request made the moment the heartbeat names a generation must see it."""

from __future__ import annotations

from gateway import contract
from tests.gateway.harness import CAST, CONSUMER, eventually, iris_route

INFO = "/serve/development/iris/v1"


def test_a_heartbeat_names_a_generation_only_once_requests_are_served_from_it(gateway, snapshot, model_server):
    def reported() -> int:
        raw = snapshot.client.hget(contract.KEY_GATEWAYS, gateway.app.state.id)
        return contract.Heartbeat.decode(raw).generation if raw else -1

    grants = {"iris": contract.Grant(users=frozenset({CAST[CONSUMER].user}))}
    seen = []
    for n in range(40):
        version = f"1.{n}.0"
        generation = snapshot.publish([iris_route([model_server.url], version=version)], tokens=CAST, grants=grants)
        eventually(lambda generation=generation: reported() >= generation, what=f"a heartbeat naming {generation}")
        response = gateway.request("GET", INFO, token=CONSUMER)
        assert response.status == 200, response
        seen.append(response.json()["model_version"])
    assert seen == [f"1.{n}.0" for n in range(40)]
