"""The data-plane contract (gateway/contract.py): every payload survives encode and decode, route
keys and metric fields are built and parsed the same way on both sides, and the wire format the
control plane has always written still decodes to the same values."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from gateway import contract

DEPRECATION = contract.Deprecation(since=1_700_000_000.0, sunset=1_735_689_600.0, note="Move to /v2")
ROUTE = contract.Route(
    deployment=7,
    service="iris",
    environment="development",
    major=1,
    version="1.2.0",
    instances=("http://127.0.0.1:9", "http://127.0.0.1:10"),
    input_schema={"type": "object", "required": ["petal_length"]},
    output_schema={"type": "string"},
)


@pytest.mark.parametrize(
    "payload",
    [
        ROUTE,
        replace(ROUTE, deprecation=DEPRECATION),
        replace(ROUTE, deprecation=contract.Deprecation(since=1_700_000_000.5)),
        replace(ROUTE, instances=(), input_schema={}, output_schema={}),
        contract.Token(user=3, username="svc-consumer", expires=None),
        contract.Token(user=3, username="svc-consumer", expires=1_900_000_000.25),
        contract.Grant(users=frozenset({1, 5, 42})),
        contract.Grant(users=frozenset()),
        contract.Heartbeat(generation=12, at=1_700_000_123.5),
        replace(ROUTE, instances=(), scale_to_zero=True),
        replace(
            ROUTE, candidate=contract.Candidate(deployment=8, version="1.3.0", instances=("http://c:1",), percent=5)
        ),
        replace(
            ROUTE,
            candidate=contract.Candidate(
                deployment=8, version="1.3.0", instances=(), percent=12.5, mode=contract.SHADOW, sticky=False
            ),
        ),
        replace(
            ROUTE,
            candidate=contract.Candidate(
                deployment=9, version="1.4.0", instances=("http://c:1",), percent=0, sticky=True
            ),
        ),
        contract.ShadowExample(ts=1_700_000_000.5, instances=[{"a": 1}], stable=["x"], candidate=["y"]),
        contract.Load(at=1_700_000_123.5),
        contract.Load(
            at=1_700_000_123.5,
            routes={
                "development/iris/v1": contract.RouteLoad(in_flight=17, average=12.5, peak=20),
                "development/iris/v2": contract.RouteLoad(1, 0.25, 1, held=1, held_since=1_700_000_122.75),
            },
        ),
    ],
    ids=lambda p: type(p).__name__,
)
def test_every_payload_survives_a_round_trip(payload):
    encoded = payload.encode()
    assert type(payload).decode(encoded) == payload
    # Redis hands the gateway bytes, the control plane's own reads give str: both decode.
    assert type(payload).decode(encoded.encode()) == payload


def test_a_route_is_keyed_where_it_is_served():
    assert contract.route_key("development", "iris", 1) == "development/iris/v1"
    # The gateway builds the key from a request's path, where the major is text.
    assert contract.route_key("development", "iris", "1") == ROUTE.key == "development/iris/v1"


def test_the_route_format_the_control_plane_writes_still_decodes():
    # Pinned on purpose: published routes outlive a deploy of either side, so a change to the
    # format must be deliberate (and this literal updated along with both readers).
    published = (
        '{"deployment":7,"service":"iris","environment":"development","major":1,"version":"1.2.0",'
        '"instances":["http://127.0.0.1:9"],'
        '"input_schema":{"type":"object","properties":{"petal_length":{"type":"number"}},"required":["petal_length"]},'
        '"output_schema":{"type":"string"},'
        '"deprecation":{"since":1700000000.0,"sunset":null,"note":"Move to /v2"},'
        '"max_instances":250,"logging":{"sample_rate":0.5,"payloads":false}}'
    )
    route = contract.Route.decode(published)
    assert route == contract.Route(
        deployment=7,
        service="iris",
        environment="development",
        major=1,
        version="1.2.0",
        instances=("http://127.0.0.1:9",),
        input_schema={
            "type": "object",
            "properties": {"petal_length": {"type": "number"}},
            "required": ["petal_length"],
        },
        output_schema={"type": "string"},
        deprecation=contract.Deprecation(since=1_700_000_000.0, sunset=None, note="Move to /v2"),
        max_instances=250,
        logging=contract.Logging(sample_rate=0.5, payloads=False),
    )
    assert json.loads(route.encode()) == json.loads(published)
    # What a control plane from before the cap wrote: the default cap applies.
    older = contract.Route.decode(published.replace(',"max_instances":250', ""))
    assert older.max_instances == contract.DEFAULT_MAX_INSTANCES == 1000
    no_deprecation = published.replace('{"since":1700000000.0,"sunset":null,"note":"Move to /v2"}', "null")
    assert contract.Route.decode(no_deprecation).deprecation is None
    # From before the prediction log: nothing is logged.
    unlogged = published.replace(',"logging":{"sample_rate":0.5,"payloads":false}', "")
    assert contract.Route.decode(unlogged).logging is None


def test_a_batch_of_logged_predictions_round_trips_and_refuses_other_shapes():
    record = ["18c2a", 1.5, "iris", "production", 1, "1.0.0", 7, 200, 2.5, 1, '{"instances":[1]}', None]
    batch = contract.PredictionBatch(records=[record, record])
    assert contract.PredictionBatch.decode(batch.encode()) == batch
    for bad in (b"{}", b"[[1, 2]]", b"not json"):
        with pytest.raises(ValueError):
            contract.PredictionBatch.decode(bad)


def test_the_other_payload_formats_are_pinned_too():
    assert contract.Token.decode('{"user":3,"username":"svc","expires":null}') == contract.Token(3, "svc", None)
    assert contract.Grant.decode("[5,1]") == contract.Grant(users=frozenset({1, 5}))
    assert contract.Grant(users=frozenset({5, 1})).encode() == "[1,5]"
    assert contract.Heartbeat.decode('{"generation":4,"at":1700000000.5}') == contract.Heartbeat(4, 1_700_000_000.5)


@pytest.mark.parametrize("kind", [contract.REQUESTS, contract.SERVER_ERRORS, contract.CLIENT_ERRORS, "b0", "b13"])
def test_a_metric_field_names_its_series_and_kind(kind):
    name = contract.metric_field(contract.series("production", "iris", 2, "2.0.1", "carol-consumer"), kind)
    expected = contract.Series("production", "iris", 2, "2.0.1", "carol-consumer"), kind
    assert contract.parse_metric_field(name) == expected
    assert contract.parse_metric_field(name.encode()) == expected


def test_counts_of_one_minute_share_a_hash():
    start = 1_700_000_040.0  # 2023-11-14 22:14:00 UTC, the start of a minute
    assert contract.minute_key(start) == contract.minute_key(start + 59.9) == f"{contract.METRICS_KEY_PREFIX}1700000040"
    assert contract.minute_key(start + 60) != contract.minute_key(start)
    assert list(contract.BUCKETS_MS) == sorted(contract.BUCKETS_MS)


def test_a_route_without_a_candidate_keeps_its_format_and_one_with_a_candidate_says_so():
    assert "candidate" not in json.loads(ROUTE.encode())
    candidate = contract.Candidate(deployment=8, version="1.3.0", instances=("http://c:1",), percent=25, sticky=True)
    encoded = json.loads(replace(ROUTE, candidate=candidate).encode())
    assert encoded["candidate"] == {
        "deployment": 8,
        "version": "1.3.0",
        "instances": ["http://c:1"],
        "percent": 25,
        "mode": "canary",
        "sticky": True,
    }
    # A candidate written without the optional fields is a plain canary; a percent out of range is clamped.
    loose = dict(encoded, candidate={"deployment": 8, "version": "1.3.0", "instances": [], "percent": 140})
    assert contract.Route.decode(json.dumps(loose)).candidate == contract.Candidate(8, "1.3.0", (), 100.0)


def test_the_shadow_kinds_and_examples_key():
    kinds = {*contract.SHADOW_KINDS, contract.SHADOW_BUCKET}
    assert len(kinds) == 6
    # Readers of the callers' latency histogram take kinds starting with BUCKET: a shadow's are apart.
    assert not any(kind.startswith(contract.BUCKET) for kind in kinds)
    assert contract.REQUESTS not in kinds and contract.SERVER_ERRORS not in kinds
    assert contract.shadow_examples_key(8) == contract.GATEWAY_PREFIX + "shadow:examples:8"
    assert {"lpush", "ltrim"} <= set(contract.GATEWAY_COMMANDS)


def test_a_shadow_example_cuts_large_payloads():
    big = [{"text": "x" * 10_000}]
    decoded = contract.ShadowExample.decode(
        contract.ShadowExample(ts=1.0, instances=big, stable=[1], candidate=[2]).encode()
    )
    assert isinstance(decoded.instances, str) and decoded.instances.endswith("…")
    assert len(decoded.instances) <= contract.SHADOW_EXAMPLE_MAX_CHARS + 1
    assert decoded.stable == [1] and decoded.candidate == [2]


@pytest.mark.parametrize(
    ("a", "b", "agree"),
    [
        (["setosa", "virginica"], ["setosa", "virginica"], True),
        (["setosa"], ["virginica"], False),
        ([0.1 + 0.2], [0.3], True),
        ([1.0], [1.00001], False),
        ([{"p": 0.5, "label": "a"}], [{"p": 0.5000000001, "label": "a"}], True),
        ([{"p": 0.5}], [{"p": 0.5, "q": 1}], False),
        ([1, 2], [1, 2, 3], False),
        ([True], [1], False),
        ([0], [0.0], True),
    ],
)
def test_predictions_agree_as_json_with_floats_close(a, b, agree):
    assert contract.predictions_agree(a, b) is agree
    assert contract.predictions_agree(b, a) is agree


def test_a_sticky_caller_falls_in_one_bucket_per_route():
    bucket = contract.sticky_bucket("ab" * 32, "production/iris/v1")
    assert bucket == contract.sticky_bucket("ab" * 32, "production/iris/v1")
    assert 0 <= bucket < 10000
    buckets = {contract.sticky_bucket(f"{i:064x}", "production/iris/v1") for i in range(2000)}
    # Spread over the range: about a tenth of callers under 1000.
    assert 100 < sum(1 for b in buckets if b < 1000) < 300
