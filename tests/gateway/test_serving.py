"""What callers of /serve get from the gateway: predictions from a real model server, the route's
description, and each refusal in the order the gateway checks (token 401, path and route 404,
grant 403, method 405, size 413, JSON 400, schema 422, upstream 422/502, instance 503, time
limit 504), every one an application/problem+json that says what was wrong."""

from __future__ import annotations

import itertools
import time
from email.utils import parsedate_to_datetime

import pytest

from gateway import contract
from tests.gateway.harness import (
    CONSUMER,
    IRIS_MODEL,
    OUTSIDER,
    SETOSA,
    VERSICOLOR,
    assert_problem,
    dead_url,
    eventually,
    iris_route,
    start_model_server,
)
from tests.ports import port as free_port

PREDICT = "/serve/development/iris/v1/predict"
INFO = "/serve/development/iris/v1"


@pytest.fixture
def live(publish, model_server):
    """development/iris/v1 served by the real model server; the consumer may call it."""
    route = iris_route([model_server.url])
    publish(route)
    return route


def test_a_prediction_comes_from_the_model_server(gateway, live):
    response = gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": [SETOSA, VERSICOLOR]})
    assert response.status == 200, response
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    prediction_id = answer.pop("prediction_id")
    assert answer == {"predictions": ["setosa", "versicolor"], "model_version": "1.2.0"}
    # Every prediction has an id of its own, in the body and in a header.
    assert response.headers["x-prediction-id"] == prediction_id and len(prediction_id) == 21
    again = gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": [SETOSA]})
    assert again.json()["prediction_id"] != prediction_id
    assert "deprecation" not in response.headers and "sunset" not in response.headers


def test_the_info_url_describes_the_live_version(gateway, live):
    response = gateway.request("GET", INFO, token=CONSUMER)
    assert response.status == 200, response
    assert response.json() == {
        "service": "iris",
        "environment": "development",
        "major": 1,
        "model_version": "1.2.0",
        "input_schema": live.input_schema,
        "output_schema": live.output_schema,
        "deprecation": None,
    }


# ---------------------------------------------------------------- 401


def test_a_caller_without_a_token_is_told_how_to_send_one(gateway, live):
    for headers in ({}, {"Authorization": "Basic Y2Fyb2w6c2VjcmV0"}, {"Authorization": "Bearer "}):
        response = gateway.request("POST", PREDICT, headers=headers, json={"instances": [SETOSA]})
        problem = assert_problem(response, 401, "Unauthorized")
        assert response.headers["www-authenticate"] == 'Bearer realm="portal"'
        assert "Authorization: Bearer <token>" in problem["detail"]


def test_an_unknown_token_is_401_invalid_token(gateway, live):
    never_issued = "ptl_abcdefgh_" + "x" * 40  # a token's shape, but no such token
    response = gateway.request("POST", PREDICT, token=never_issued, json={"instances": [SETOSA]})
    problem = assert_problem(response, 401, "Unauthorized")
    assert response.headers["www-authenticate"] == 'Bearer realm="portal", error="invalid_token"'
    assert "unknown, revoked, expired" in problem["detail"]


def test_an_expired_token_is_401_invalid_token(gateway, publish, model_server):
    expired = contract.Token(user=1, username="carol-consumer", expires=time.time() - 60)
    publish(iris_route([model_server.url]), tokens={CONSUMER: expired})
    response = gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": [SETOSA]})
    assert_problem(response, 401, "Unauthorized")
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_an_unauthenticated_caller_cannot_tell_which_services_exist(gateway, live):
    # The token is checked before the route: a missing service and a live one look alike.
    missing = gateway.request("POST", "/serve/development/nothing/v1/predict", json={"instances": [SETOSA]})
    existing = gateway.request("POST", PREDICT, json={"instances": [SETOSA]})
    assert_problem(missing, 401)
    assert missing.body == existing.body and missing.headers == existing.headers


# ---------------------------------------------------------------- 404


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/serve",
        "/serve/development/iris",
        "/serve/development/iris/1/predict",
        "/serve/development/iris/vone/predict",
        "/serve/development/iris/v/predict",
        "/serve/development/iris/v1/explain",
        "/serve/development/iris/v1/predict/more",
        "/predict/development/iris/v1",
    ],
)
def test_a_path_that_is_not_a_serving_url_is_404(gateway, live, path):
    problem = assert_problem(gateway.request("POST", path, token=CONSUMER, json={"instances": [SETOSA]}), 404)
    assert "/serve/{environment}/{service}/v{major}/predict" in problem["detail"]


@pytest.mark.parametrize(
    "path",
    [
        "/serve/development/nothing/v1/predict",
        "/serve/development/iris/v7/predict",
        "/serve/production/iris/v1/predict",
        "/serve/production/iris/v1",
    ],
)
def test_a_route_that_is_not_live_is_404_naming_it(gateway, live, path):
    method = "POST" if path.endswith("/predict") else "GET"
    response = gateway.request(method, path, token=CONSUMER, json={"instances": [SETOSA]})
    problem = assert_problem(response, 404, "No such service")
    key = path.removeprefix("/serve/").removesuffix("/predict")
    assert f"Nothing is live at {key}." in problem["detail"]


# ---------------------------------------------------------------- 403, 405


def test_a_caller_without_a_grant_is_403_naming_them(gateway, live):
    for method, path in (("POST", PREDICT), ("GET", INFO)):
        response = gateway.request(method, path, token=OUTSIDER, json={"instances": [SETOSA]})
        problem = assert_problem(response, 403, "Forbidden")
        assert "'oscar-outsider' has no grant to call 'iris'" in problem["detail"]


def test_a_service_with_no_grant_at_all_is_403(gateway, publish, model_server):
    publish(iris_route([model_server.url]), grants={})
    assert_problem(gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": [SETOSA]}), 403)


def test_wrong_methods_are_405(gateway, live):
    problem = assert_problem(gateway.request("GET", PREDICT, token=CONSUMER), 405, "Method not allowed")
    assert "POST" in problem["detail"]
    problem = assert_problem(
        gateway.request("POST", INFO, token=CONSUMER, json={"instances": [SETOSA]}), 405, "Method not allowed"
    )
    assert "Use GET here" in problem["detail"]


# ---------------------------------------------------------------- 413


@pytest.fixture
def small_gateway(gateway_factory, publish, model_server):
    """A gateway that takes bodies of at most 1000 bytes, serving development/iris/v1."""
    gateway = gateway_factory(max_body_bytes=1000)
    publish(iris_route([model_server.url]))
    return gateway


def test_an_oversized_body_is_refused_from_its_content_length_unread(small_gateway):
    # `unread`: the harness fails the test if the gateway asks for a single byte of the body.
    response = small_gateway.request(
        "POST", PREDICT, token=CONSUMER, headers={"Content-Length": str(50 * 1024 * 1024)}, unread=True
    )
    problem = assert_problem(response, 413, "Payload too large")
    assert "at most 1000 bytes" in problem["detail"]


def test_a_streamed_body_without_length_is_cut_off_at_the_limit(small_gateway):
    # An endless upload: the request only ends because the gateway stops reading at the limit.
    endless = itertools.repeat(b" " * 300)
    problem = assert_problem(small_gateway.request("POST", PREDICT, token=CONSUMER, chunks=endless), 413)
    assert "at most 1000 bytes" in problem["detail"]


def test_a_streamed_body_within_the_limit_is_served(small_gateway):
    body = b'{"instances": [' + b'{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}]}'
    chunks = [body[i : i + 16] for i in range(0, len(body), 16)]
    response = small_gateway.request("POST", PREDICT, token=CONSUMER, chunks=chunks)
    assert response.status == 200 and response.json()["predictions"] == ["setosa"], response


# ---------------------------------------------------------------- 400


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"{not json", "The body is not JSON"),
        (b"", "The body is not JSON"),
        (b'{"instances": [{"sepal_length": NaN}]}', "NaN is not JSON"),
        (b'{"instances": [{"sepal_length": -Infinity}]}', "-Infinity is not JSON"),
        (b'{"instances": [\xff]}', "The body is not JSON"),
        (b'{"instances": [' + b"[" * 50_000 + b"]" * 50_000 + b"]}", "nested too deeply"),
    ],
    ids=["malformed", "empty", "nan", "infinity", "not-utf8", "deep"],
)
def test_a_body_that_is_not_json_is_400(gateway, live, body, detail):
    problem = assert_problem(gateway.request("POST", PREDICT, token=CONSUMER, body=body), 400, "Malformed JSON")
    assert detail in problem["detail"]


@pytest.mark.parametrize(
    "payload",
    [{"rows": [SETOSA]}, {"instances": []}, {"instances": SETOSA}, [SETOSA], "instances", None],
    ids=["no-instances", "empty", "not-a-list", "bare-list", "string", "null"],
)
def test_a_body_without_instances_is_400(gateway, live, payload):
    body = b"null" if payload is None else None
    response = gateway.request("POST", PREDICT, token=CONSUMER, json=payload, body=body)
    problem = assert_problem(response, 400, "Bad request")
    assert '{"instances": [...]}' in problem["detail"]


# ---------------------------------------------------------------- 422


def test_instances_that_fail_the_input_schema_are_422_naming_each_field(gateway, live):
    bad = [
        {"sepal_length": "long", "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2},
        SETOSA,
        {**SETOSA, "petal_width": None, "colour": "blue"},
    ]
    response = gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": bad})
    problem = assert_problem(response, 422, "Invalid input")
    fields = {(e["instance"], e["field"]) for e in problem["errors"]}
    assert {(0, "sepal_length"), (2, "petal_width")} <= fields
    assert not any(e["instance"] == 1 for e in problem["errors"])
    assert any(e["instance"] == 2 and "colour" in e["message"] for e in problem["errors"])
    assert "instance 0 field sepal_length: 'long' is not of type 'number'" in problem["detail"]
    assert "instance 2 field petal_width" in problem["detail"]


def test_a_missing_field_is_named_in_the_message(gateway, live):
    partial = {k: v for k, v in SETOSA.items() if k != "petal_length"}
    problem = assert_problem(gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": [partial]}), 422)
    assert problem["errors"] == [
        {"instance": 0, "field": "petal_length", "message": "petal_length is required and was not sent"}
    ]
    assert problem["detail"] == "instance 0 field petal_length: petal_length is required and was not sent"


def test_a_draft_2020_12_schema_is_checked_by_its_own_rules(gateway, publish, model_server):
    # prefixItems constrains the leading items only; drafts before 2020-12 ignore it, so an
    # engine of the wrong draft would let ["x"] through.
    rows = {"type": "array", "prefixItems": [{"type": "integer"}], "minItems": 1}
    publish(iris_route([model_server.url], input_schema=rows))
    response = gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": [[1, "anything"], [2]]})
    assert response.status == 200 and response.json()["predictions"] == [2, 1], response
    problem = assert_problem(gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": [[1], ["x"]]}), 422)
    assert [(e["instance"], e["field"]) for e in problem["errors"]] == [(1, "0")]


@pytest.mark.parametrize("draft_2020_12_only", [False, True], ids=["fast engine", "reference engine"])
def test_a_pattern_is_matched_in_linear_time(gateway, publish, model_server, draft_2020_12_only):
    """^(a+)+$ against 'aaa…a!' backtracks for longer than the universe is old in Python's `re`:
    the gateway matches patterns with RE2 in both its engines, so one caller cannot hold the
    process every service goes through."""
    codes = {"type": "object", "properties": {"code": {"type": "string", "pattern": "^(a+)+$"}}, "required": ["code"]}
    if draft_2020_12_only:
        codes["dependentRequired"] = {}
    publish(iris_route([model_server.url], input_schema=codes))
    hostile = {"instances": [{"code": "a" * 100_000 + "!"}]}
    problem = assert_problem(gateway.request("POST", PREDICT, token=CONSUMER, json=hostile), 422)
    assert [(e["instance"], e["field"]) for e in problem["errors"]] == [(0, "code")]
    response = gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": [{"code": "aaaa"}]})
    assert response.status == 200, response


def test_more_instances_than_the_service_takes_is_413_before_any_is_checked(gateway, publish, model_server):
    publish(iris_route([model_server.url], max_instances=3))
    assert gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": [SETOSA] * 3}).status == 200
    # Invalid instances, too: the count is refused before a single one is validated.
    problem = assert_problem(
        gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": [{"x": 1}] * 4}), 413, "Too many instances"
    )
    assert problem["max_instances"] == 3 and "at most 3 instances" in problem["detail"]


def test_a_large_body_is_checked_beside_the_event_loop_with_the_same_answers(gateway, publish, model_server):
    """Bodies over 256 KiB are parsed and validated in a thread (other callers keep being
    answered); the answers are those of the inline path."""
    padded = {"type": "object", "properties": {"note": {"type": "string"}}, "required": ["note"]}
    publish(iris_route([model_server.url], input_schema=padded))
    good = {"instances": [{"note": "x" * 500}] * 900}
    response = gateway.request("POST", PREDICT, token=CONSUMER, json=good)
    assert response.status == 200 and len(response.json()["predictions"]) == 900, response
    bad = {"instances": [{"note": "x" * 500}] * 899 + [{"note": 5}]}
    problem = assert_problem(gateway.request("POST", PREDICT, token=CONSUMER, json=bad), 422)
    assert [(e["instance"], e["field"]) for e in problem["errors"]] == [(899, "note")]


def test_a_format_is_an_annotation_as_in_the_registry_check(gateway, publish, model_server):
    emails = {"type": "object", "properties": {"email": {"type": "string", "format": "email"}}}
    publish(iris_route([model_server.url], input_schema=emails))
    response = gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": [{"email": "not an email"}]})
    assert response.status == 200, response


def test_input_the_model_refuses_is_422(gateway, publish, refusing_model_server):
    publish(iris_route([refusing_model_server.url]))
    response = gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": [SETOSA]})
    problem = assert_problem(response, 422, "The model refused the input")
    assert "returned 0 predictions for 1 instances" in problem["detail"]


# ---------------------------------------------------------------- 502, 503, 504


def test_a_model_that_fails_is_502_with_its_reason(gateway, publish, broken_model_server):
    publish(iris_route([broken_model_server.url]))
    response = gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": [SETOSA]})
    problem = assert_problem(response, 502, "The model failed")
    assert "RuntimeError: the weights file is corrupt" in problem["detail"]


@pytest.mark.parametrize("instances", [0, 1, 2], ids=["no-instance", "one-refusing", "two-refusing"])
def test_a_route_without_a_live_instance_is_503_retry_after(gateway, publish, instances):
    publish(iris_route([dead_url() for _ in range(instances)]))
    response = gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": [SETOSA]})
    problem = assert_problem(response, 503, "No instance available")
    assert response.headers["retry-after"] == "2"
    assert "development/iris/v1" in problem["detail"]


def test_a_dead_instance_is_passed_over_for_a_live_one(gateway, publish, model_server):
    # The dead one is listed first, so the first request tries it and is retried on the other.
    publish(iris_route([dead_url(), model_server.url]))
    for _ in range(5):
        response = gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": [SETOSA]})
        assert response.status == 200 and response.json()["predictions"] == ["setosa"], response


def test_an_instance_that_comes_back_is_used_again(gateway, publish, models):
    port = free_port()
    publish(iris_route([f"http://127.0.0.1:{port}"]))
    assert_problem(gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": [SETOSA]}), 503)
    artifact = models / "late.py"
    artifact.write_text(IRIS_MODEL)
    late = start_model_server(artifact, version="1.2.0", log=models / "late.log", port=port)
    try:
        # Taken out after the refusal, it is brought back by the health checks once ready.
        eventually(
            lambda: gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": [SETOSA]}).status == 200,
            timeout=10,
            what="the instance serving again",
        )
    finally:
        late.stop()


def test_an_instance_on_a_unix_socket_is_served_and_brought_back_after_a_failure(gateway, publish, models, tmp_path):
    """Sandboxed model servers answer on unix sockets: predictions go there, and one taken out
    after a refused connection is health-checked back in over its socket."""
    artifact = models / "socket.py"
    artifact.write_text(IRIS_MODEL)
    socket = tmp_path / "model.sock"
    server = start_model_server(artifact, version="1.3.0", log=models / "socket.log", socket=socket)
    publish(iris_route([server.url]))
    try:
        answer = eventually(
            lambda: (
                (r := gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": [SETOSA]})).status == 200
                and r
            ),
            what="the socket instance serving",
        )
        assert answer.json()["model_version"] == "1.3.0"
    finally:
        server.stop()
    assert_problem(gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": [SETOSA]}), 503)
    again = start_model_server(artifact, version="1.3.0", log=models / "socket.log", socket=socket)
    try:
        eventually(
            lambda: gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": [SETOSA]}).status == 200,
            what="the socket instance serving again",
        )
    finally:
        again.stop()


def test_a_model_slower_than_the_time_limit_is_504(gateway_factory, publish, slow_model_server):
    gateway = gateway_factory(upstream_timeout=1.0)
    publish(iris_route([slow_model_server.url]))
    response = gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": [SETOSA]})
    problem = assert_problem(response, 504, "Gateway timeout")
    assert "did not answer within 1 s" in problem["detail"]


def test_a_sub_second_time_limit_is_reported_as_set(gateway_factory, publish, slow_model_server):
    gateway = gateway_factory(upstream_timeout=0.5)
    publish(iris_route([slow_model_server.url]))
    problem = assert_problem(gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": [SETOSA]}), 504)
    assert "within 0.5 s" in problem["detail"], problem["detail"]


# ---------------------------------------------------------------- deprecation


def test_a_deprecated_major_says_so_in_headers_and_info(gateway, publish, model_server):
    since, sunset = 1_700_000_000.0, 1_893_456_000.0  # 2023-11-14, 2030-01-01
    deprecation = contract.Deprecation(since=since, sunset=sunset, note="Move to /v2.")
    publish(iris_route([model_server.url], deprecation=deprecation))

    response = gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": [SETOSA]})
    assert response.status == 200 and response.json()["predictions"] == ["setosa"], response
    assert response.headers["deprecation"] == "@1700000000"
    assert parsedate_to_datetime(response.headers["sunset"]).timestamp() == sunset
    assert response.headers["sunset"] == "Tue, 01 Jan 2030 00:00:00 GMT"

    info = gateway.request("GET", INFO, token=CONSUMER)
    assert info.status == 200 and info.headers["deprecation"] == "@1700000000"
    assert info.json()["deprecation"] == {
        "since": "2023-11-14T22:13:20+00:00",
        "sunset": "2030-01-01T00:00:00+00:00",
        "note": "Move to /v2.",
    }


def test_a_deprecation_without_a_sunset_has_no_sunset_header(gateway, publish, model_server):
    publish(iris_route([model_server.url], deprecation=contract.Deprecation(since=1_700_000_000.0)))
    response = gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": [SETOSA]})
    assert response.status == 200 and response.headers["deprecation"] == "@1700000000"
    assert "sunset" not in response.headers


# ---------------------------------------------------------------- order


@pytest.mark.parametrize(
    ("token", "body", "status"),
    [
        (OUTSIDER, b"{not json", 403),  # the grant before the body
        (CONSUMER, b"{" * 2000, 413),  # the size before parsing
        (CONSUMER, b'{"instances": [{"sepal_length": NaN}]}', 400),  # JSON before the schema
    ],
    ids=["grant-before-body", "size-before-json", "json-before-schema"],
)
def test_the_first_failed_check_decides(small_gateway, token, body, status):
    assert_problem(small_gateway.request("POST", PREDICT, token=token, body=body), status)
