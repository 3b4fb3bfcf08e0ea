"""The service catalog: every signed-in user finds every service (name, team, description, what is
live where, its input schema and an example call) on /services/ and GET /api/v1/services; the
model behind a service stays with those who may see it."""

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from deployments import services
from deployments.models import Deployment, Status
from registry import services as registry
from tests.factories import make_version

pytestmark = pytest.mark.django_db


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def live(service, environment, owner, version=None):
    """A deployment row marked live (what the catalog reads), without starting model servers."""
    version = version or service.model.versions.get()
    return Deployment.objects.create(
        service=service,
        version=version,
        environment=environment,
        major=version.major,
        status=Status.LIVE,
        requested_by=owner,
    )


@pytest.fixture
def catalog(iris_service, environments, owner):
    services.service_update(actor=owner, service=iris_service, description="Classifies iris flowers")
    live(iris_service, environments["production"], owner)
    services.major_deprecate(actor=owner, service=iris_service, major=1, note="Move to /v2")
    return iris_service


def test_an_outsider_finds_a_service_and_how_to_call_it_but_not_its_model(catalog, api, outsider):
    answer = api(outsider).get("/api/v1/services", {"q": "flowers"})
    assert answer.status_code == 200, answer.content
    (entry,) = answer.json()["results"]
    assert entry["name"] == "iris-api" and entry["team"] == "vision"
    assert entry["model"] is None and entry["can_view"] is False
    assert entry["may_call"] is False and entry["pending_request"] is None
    (api_v1,) = entry["live"]
    assert api_v1["environment"] == "production" and api_v1["major"] == 1
    assert api_v1["endpoint"].endswith("/serve/production/iris-api/v1/predict")
    assert api_v1["input_schema"]["type"] == "object" and api_v1["input_schema"]["properties"]
    assert api_v1["example"].startswith("curl ") and api_v1["endpoint"] in api_v1["example"]
    assert '"instances"' in api_v1["example"]
    assert api_v1["deprecated"] is True and api_v1["deprecation_note"] == "Move to /v2"
    assert entry["deprecated"] is True
    # The service's own details (deployments, grants) stay private.
    assert api(outsider).get("/api/v1/services/iris-api").status_code == 404
    assert api(outsider).get("/api/v1/services/iris-api/grants").status_code == 404


def test_the_team_sees_the_model_and_may_call(catalog, api, member):
    (entry,) = api(member).get("/api/v1/services").json()["results"]
    assert entry["model"] == "iris" and entry["can_view"] is True and entry["may_call"] is True


@pytest.mark.parametrize(
    "params, found",
    [
        ({"q": "IRIS"}, ["iris-api"]),
        ({"q": "vision"}, ["iris-api", "other-api"]),
        ({"q": "flowers"}, ["iris-api"]),
        ({"search": "other"}, ["other-api"]),
        ({"team": "vision"}, ["iris-api", "other-api"]),
        ({"team": "nobody"}, []),
        ({"environment": "production"}, ["iris-api"]),
        ({"environment": "staging"}, []),
        ({"q": "nothing-like-it"}, []),
    ],
)
def test_search_and_filters(catalog, api, outsider, owner, params, found):
    services.service_create(actor=owner, name="other-api", team=catalog.team, model=catalog.model)
    answer = api(outsider).get("/api/v1/services", params)
    assert answer.status_code == 200
    assert [s["name"] for s in answer.json()["results"]] == found


def test_an_unknown_environment_filter_is_a_400_naming_the_environments(catalog, api, outsider):
    answer = api(outsider).get("/api/v1/services", {"environment": "prod"})
    assert answer.status_code == 400 and "development" in answer.json()["detail"]


def test_the_catalog_is_paginated_with_a_constant_number_of_queries(catalog, api, outsider, owner, environments):
    client = api(outsider)
    client.get("/api/v1/services")  # warm the session and content types
    with CaptureQueriesContext(connection) as few:
        assert client.get("/api/v1/services").status_code == 200
    for index in range(6):
        other = services.service_create(actor=owner, name=f"svc-{index}", team=catalog.team, model=catalog.model)
        live(other, environments["development"], owner)
    with CaptureQueriesContext(connection) as many:
        answer = client.get("/api/v1/services", {"page_size": 5})
    assert answer.json()["count"] == 7 and len(answer.json()["results"]) == 5 and answer.json()["next"]
    assert len(many) == len(few)  # one page of 5 costs what a page of 1 did


def test_the_catalog_page_lists_every_service_for_anyone(catalog, outsider):
    page = signed_in(outsider).get("/services/?q=iris").content.decode()
    assert 'href="/services/iris-api/"' in page and "production /v1" in page and "deprecated" in page
    assert "Request access" in page
    empty = signed_in(outsider).get("/services/?q=zzz").content.decode()
    assert "No service matches “zzz”" in empty


def test_the_catalog_page_of_a_service_shows_how_to_call_it_and_hides_the_model(catalog, outsider):
    response = signed_in(outsider).get("/services/iris-api/")
    page = response.content.decode()
    assert response.status_code == 200
    assert "Classifies iris flowers" in page and "curl -H" in page and "Input schema" in page
    assert "/models/iris/" not in page and "Deployments" not in page
    assert 'action="/services/iris-api/access-requests"' in page


def test_versions_that_are_not_live_stay_hidden(catalog, api, outsider, owner, iris_file):
    make_version(catalog.model, iris_file, version="2.0.0", actor=owner)
    entry = api(outsider).get("/api/v1/services").json()["results"][0]
    assert [a["version"] for a in entry["live"]] == ["1.0.0"]
    assert "2.0.0" not in signed_in(outsider).get("/services/iris-api/").content.decode()


def test_a_model_of_another_team_is_not_named(api, outsider, owner, environments, iris_file):
    from accounts import services as accounts

    team = accounts.team_create(actor=owner, name="secret")
    model = registry.registered_model_create(actor=owner, name="hidden-model", team=team)
    make_version(model, iris_file, actor=owner)
    services.service_create(actor=owner, name="open-api", team=team, model=model)
    body = api(outsider).get("/api/v1/services").content.decode()
    assert "open-api" in body and "hidden-model" not in body
