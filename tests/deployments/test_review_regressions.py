"""Regression tests for defects found in review: gateway inputs, validation engines, instance
names, the switch order and lost leases."""

import pytest

from deployments import services
from gateway.state import _compile
from tests.factories import bearer_client, deploy_now
from tests.support import call, eventually

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_gateway_validator_follows_draft_2020_12():
    prefixed = _compile({"type": "array", "prefixItems": [{"type": "integer"}]})
    with pytest.raises(Exception):  # noqa: B017 - whatever the engine raises
        prefixed(["x"])
    prefixed([1, "anything"])
    # format is an annotation in 2020-12 (the registry's check): not enforced here either
    _compile({"type": "string", "format": "email"})("not an email")


def test_bodies_that_are_not_json_answer_400(iris_service, member, environments, gateway, owner, service_account):
    deploy_now(iris_service, member, environments["development"], iris_service.model.versions.get())
    services.grant_create(actor=owner, service=iris_service, user=service_account)
    token = bearer_client(service_account, scopes=["invoke"]).raw_token
    url = f"{gateway.url}/serve/development/iris-api/v1/predict"
    assert eventually(lambda: call(url, token=token, body=b'{"instances": [[1,2,3,4]]}')[0] in (200, 422))
    for body in (b'{"instances": [' + b"[" * 50_000 + b"]" * 50_000 + b"]}", b'{"instances": [{"sepal_length": NaN}]}'):
        code, problem, _ = call(url, token=token, body=body)
        assert code == 400 and problem["title"] == "Malformed JSON", problem
