"""Attacks on the data plane and the sign-in, from outside, as a user would make them: over
HTTP against the real web server and the real gateway, with sandboxed model servers.

While an attack runs, a bystander keeps calling another service; every one of its calls
must be answered (each within the client's 5 s limit: a stalled gateway fails them).
"""

from __future__ import annotations

import json

import pytest
import requests

from accounts import services as accounts
from deployments import services
from portal.demo_models import iris_instances
from registry.models import ModelVersion
from tests.factories import bearer_client, deploy_now, register
from tests.support import Load, call, eventually

pytestmark = pytest.mark.django_db(transaction=True)

EVIL_PATTERN = "^(a+)+$"  # backtracks exponentially in a backtracking engine
WORDS_SCHEMA = {
    "type": "object",
    "properties": {"code": {"type": "string", "pattern": EVIL_PATTERN}},
    "required": ["code"],
}


def bystander(url: str, token: str) -> Load:
    """Calls another service over and over while an attack runs; a call not answered within
    5 s counts as failed."""
    return Load(url, token, timeout=5)


def always_answered(load: Load) -> None:
    assert load.sent > 0 and load.failed == 0, (load.sent, load.failures[:3])


@pytest.fixture
def consumer(service_account) -> str:
    return bearer_client(service_account, scopes=["invoke"]).raw_token


@pytest.fixture
def bystander_url(iris_service, owner, service_account, environments, gateway, consumer) -> str:
    """iris-api, live in development and granted to the consumer: the service an attack must not stall."""
    deploy_now(iris_service, owner, environments["development"], iris_service.model.versions.get())
    services.grant_create(actor=owner, service=iris_service, user=service_account)
    url = f"{gateway.url}/serve/development/iris-api/v1/predict"
    assert eventually(lambda: call(url, token=consumer, body={"instances": iris_instances()})[0] == 200)
    return url


@pytest.fixture
def words_url(api, owner, team, service_account, environments, gateway, tmp_path, consumer) -> str:
    """'words', a service whose input schema has a pattern with catastrophic backtracking,
    registered through the API like any other and live in development."""
    from registry import services as registry

    registry.registered_model_create(actor=owner, name="words", team=team)
    model_file = tmp_path / "words.py"
    model_file.write_text("def predict(instances):\n    return [len(i['code']) for i in instances]\n")
    response = register(
        api(owner),
        "words",
        model_file,
        flavor="pyfunc",
        sample_input=json.dumps({"instances": [{"code": "aaa"}]}),
        input_schema=json.dumps(WORDS_SCHEMA),
    )
    assert response.status_code == 201, response.content
    version = ModelVersion.objects.get(model__name="words")
    service = services.service_create(actor=owner, name="words", team=team, model=version.model)
    services.grant_create(actor=owner, service=service, user=service_account)
    deploy_now(service, owner, environments["development"], version)
    url = f"{gateway.url}/serve/development/words/v1/predict"
    assert eventually(lambda: call(url, token=consumer, body={"instances": [{"code": "aa"}]})[0] == 200)
    return url


def test_a_backtracking_pattern_stalls_neither_the_gateway_nor_other_services(
    gateway, words_url, bystander_url, consumer
):
    evil = {"instances": [{"code": "a" * 50_000 + "!"} for _ in range(20)]}
    with bystander(bystander_url, consumer) as load:
        for _ in range(5):
            code, answer, _ = call(words_url, token=consumer, body=evil, timeout=5)
            assert code == 422, answer
            assert "code" in json.dumps(answer["errors"]) and "does not match" in json.dumps(answer["errors"])
    always_answered(load)
    assert call(f"{gateway.url}/health", timeout=5)[0] == 200


def test_a_giant_body_is_refused_and_a_large_one_stalls_no_one(
    api, owner, gateway, iris_service, bystander_url, consumer
):
    giant = json.dumps({"instances": [[1]] * 1_200_000}).encode()  # 6 MB: within the body limit
    with bystander(bystander_url, consumer) as load:
        code, answer, _ = call(bystander_url, token=consumer, body=giant, timeout=30)
    assert code == 413, answer
    assert answer["title"] == "Too many instances" and "1000" in answer["detail"], answer
    always_answered(load)

    # Raised to 100,000 instances a request (through the API), a large body is checked off
    # the event loop: it is answered, and so is everyone else meanwhile.
    response = api(owner).patch("/api/v1/services/iris-api", {"max_instances": 100_000}, format="json")
    assert response.status_code == 200, response.content
    large = json.dumps({"instances": iris_instances(count=1) * 100_000}).encode()
    with bystander(bystander_url, consumer) as load:
        code, answer, _ = eventually(
            lambda: (r := call(bystander_url, token=consumer, body=large, timeout=60))[0] != 413 and r
        )
    assert code == 200 and len(answer["predictions"]) == 100_000
    always_answered(load)


def test_schemas_and_samples_nested_to_break_the_data_plane_are_refused(api, owner, team, tmp_path):
    from registry import services as registry

    registry.registered_model_create(actor=owner, name="deep", team=team)
    model_file = tmp_path / "deep.py"
    model_file.write_text("def predict(instances):\n    return [0 for _ in instances]\n")
    # ~600 levels of JSON: what made every gateway's snapshot build fail before.
    schema = '{"type": "object", "properties": {"x": ' * 300 + "{}" + "}}" * 300
    response = register(api(owner), "deep", model_file, flavor="pyfunc", input_schema=schema)
    assert response.status_code == 400 and "levels deep; at most 64 are allowed" in response.json()["detail"]
    sample = '{"instances": [' + "[" * 600 + "1" + "]" * 600 + "]}"
    response = register(api(owner), "deep", model_file, flavor="pyfunc", sample_input=sample)
    assert response.status_code == 400 and "at most 24 are allowed" in response.json()["detail"]
    assert not ModelVersion.objects.filter(model__name="deep").exists()


def test_a_token_cannot_make_a_stronger_token_over_http(portal_server, member, gateway):
    _, raw = accounts.token_create(actor=member, user=member, name="ci", scopes=["read", "write"], expires_in_days=2)
    headers = {"Authorization": f"Bearer {raw}"}
    url = f"{portal_server.url}/api/v1/tokens"
    stronger = requests.post(
        url, json={"name": "more", "scopes": ["read", "write", "invoke"]}, headers=headers, timeout=10
    )
    assert stronger.status_code == 403 and "cannot make a token with invoke" in stronger.json()["detail"]
    longer = requests.post(url, json={"name": "longer", "expires_in_days": 365}, headers=headers, timeout=10)
    assert longer.status_code == 400 and "cannot outlive it" in longer.json()["detail"]
    # Nor does the write token itself open the data plane.
    assert call(f"{gateway.url}/serve/development/iris-api/v1/predict", token=raw, body={"instances": [[1]]})[0] == 401


@pytest.mark.parametrize("door", ["/login/", "/admin/login/", "/api/v1/auth/token"])
def test_guessing_passwords_is_throttled_at_every_door_over_http(portal_server, member, door):
    session = requests.Session()

    def attempt(password: str) -> requests.Response:
        if door.startswith("/api/"):
            body = {"username": member.username, "password": password, "name": "guess"}
            return session.post(f"{portal_server.url}{door}", json=body, timeout=10)
        session.get(f"{portal_server.url}{door}", timeout=10)
        form = {
            "username": member.username,
            "password": password,
            "csrfmiddlewaretoken": session.cookies["csrftoken"],
        }
        return session.post(f"{portal_server.url}{door}", data=form, headers={"Referer": portal_server.url}, timeout=10)

    answers = [attempt(f"guess-{i}").status_code for i in range(10)]
    assert 429 not in answers
    refused = attempt("the right one would not help now")
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert "Too many sign-in attempts" in refused.text
