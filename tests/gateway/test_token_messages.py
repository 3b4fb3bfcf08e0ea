"""What the gateway tells a caller whose token is missing from the header or cut short: the
same words as the portal's API, for the token shape accounts/tokens.py makes."""

from __future__ import annotations

import pytest

from accounts import tokens
from gateway import app
from tests.gateway.harness import SETOSA, assert_problem, iris_route

PREDICT = "/serve/development/iris/v1/predict"


@pytest.fixture
def live(publish, model_server):
    publish(iris_route([model_server.url]))


def test_the_gateway_knows_the_token_shape_the_portal_makes():
    raw, _, _ = tokens.token_generate()
    assert app.TOKEN_PREFIX.decode() == tokens.TOKEN_PREFIX
    assert app.TOKEN_BODY_LENGTH == tokens.TOKEN_BODY_LENGTH == len(raw) - len(tokens.TOKEN_PREFIX)
    assert app._token_shape_problem(raw.encode()) is None
    assert app._token_shape_problem(raw[:-1].encode()) == tokens.token_shape_problem(raw[:-1])


def test_a_token_cut_short(gateway, live):
    raw, _, _ = tokens.token_generate()
    response = gateway.request("POST", PREDICT, token=raw[:20], json={"instances": [SETOSA]})
    problem = assert_problem(response, 401, "Unauthorized")
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert problem["detail"] == (
        "This is not a whole Portal token: it should be ptl_ followed by 49 characters (this one has 16); "
        "copy it again or create a new one."
    )


def test_bearer_with_nothing_after_it(gateway, live):
    """What `-H "Authorization: Bearer $(portal print-token)"` sends where `portal` is not found."""
    for header in ("Bearer ", "Bearer", "bearer   "):
        response = gateway.request("POST", PREDICT, headers={"Authorization": header}, json={"instances": [SETOSA]})
        problem = assert_problem(response, 401, "Unauthorized")
        assert "'Bearer' with no token after it" in problem["detail"], header
        assert "is `portal` on your PATH?" in problem["detail"]
        assert "scope" not in problem["detail"]  # the token was missing, not short of a scope


def test_a_token_of_another_kind_is_unknown(gateway, live):
    response = gateway.request("POST", PREDICT, token="ghp_" + "x" * 36, json={"instances": [SETOSA]})
    assert "unknown, revoked, expired" in assert_problem(response, 401)["detail"]
