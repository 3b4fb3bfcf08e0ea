"""The gateway's 422 names the fields: those sent that the model does not take (with the
input meant), those required and not sent, and arrays of the wrong length, each error with
the path of its field."""

from __future__ import annotations

import json

from gateway.checker import _route, refusal
from tests.gateway.harness import CONSUMER, SETOSA, assert_problem, iris_route

PREDICT = "/serve/development/iris/v1/predict"
ROWS = {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4}


def test_a_misspelt_field_is_named_with_the_input_it_was_meant_for(gateway, publish, model_server):
    publish(iris_route([model_server.url]))
    typo = {k: v for k, v in SETOSA.items() if k != "sepal_length"} | {"sepal_len": 5.1}
    problem = assert_problem(gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": [SETOSA, typo]}), 422)
    assert problem["errors"] == [
        {
            "instance": 1,
            "field": "sepal_len",
            "message": "sepal_len is not an input of this model; did you mean sepal_length?",
        },
        {"instance": 1, "field": "sepal_length", "message": "sepal_length is required and was not sent"},
    ]
    assert problem["detail"].startswith("instance 1 field sepal_len: sepal_len is not an input of this model")


def test_an_unknown_field_without_a_close_input_lists_the_inputs(gateway, publish, model_server):
    publish(iris_route([model_server.url]))
    odd = {**SETOSA, "petal_width": "wide", "colour": "blue"}
    problem = assert_problem(gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": [odd]}), 422)
    by_field = {e["field"]: e["message"] for e in problem["errors"]}
    assert by_field["colour"].startswith("colour is not an input of this model (its inputs: sepal_length, ")
    assert by_field["petal_width"] == "'wide' is not of type 'number'"
    # The route's schema refuses other fields: one error for the field, not two.
    only_extra = {**SETOSA, "colour": "blue"}
    problem = assert_problem(gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": [only_extra]}), 422)
    assert [e["field"] for e in problem["errors"]] == ["colour"]


def test_an_array_of_the_wrong_length_is_told_the_length_expected(gateway, publish, model_server):
    publish(iris_route([model_server.url], input_schema=ROWS))
    rows = [[5.1, 3.5, 1.4, 0.2], [5.1, 3.5, 1.4], [1, 2, 3, 4, 5]]
    problem = assert_problem(gateway.request("POST", PREDICT, token=CONSUMER, json={"instances": rows}), 422)
    assert problem["errors"] == [
        {"instance": 1, "field": "$", "message": "each instance takes exactly 4 values; this one has 3"},
        {"instance": 2, "field": "$", "message": "each instance takes exactly 4 values; this one has 5"},
    ]
    assert "instance 1: each instance takes exactly 4 values; this one has 3" in problem["detail"]


def test_every_error_has_a_field_in_both_engines():
    """The inline check and the checker processes share `refusal`; every error it gives has
    a field, for nested objects and arrays too."""
    schema = {
        "type": "object",
        "properties": {
            "pixels": {**ROWS, "minItems": 2},
            "meta": {"type": "object", "properties": {"source": {"type": "string"}}, "required": ["source"]},
        },
        "required": ["pixels", "meta"],
    }
    route = _route("iris", 100, json.dumps(schema))
    body = {"instances": [{"pixels": [1], "meta": {"sourse": "x"}}, {"pixels": [1, 2], "meta": {"source": 1}}, 7]}
    status, _, _, extra = refusal(json.dumps(body).encode(), route)
    assert status == 422
    assert [(e["instance"], e["field"]) for e in extra["errors"]] == [
        (0, "meta.sourse"),
        (0, "pixels"),
        (0, "meta.source"),
        (1, "meta.source"),
        (2, "$"),
    ]
    messages = {e["field"]: e["message"] for e in extra["errors"]}
    assert messages["meta.sourse"] == "sourse is not an input of this model; did you mean source?"
    assert messages["pixels"] == "pixels takes 2 to 4 values; this one has 1"
    assert all(e["field"] for e in extra["errors"])
