"""Deprecating a major version: who may, what is checked, and the headers its callers get."""

from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import pytest

from accounts.models import AuditEvent
from deployments import services
from deployments.models import Deprecation
from portal.demo_models import iris_instances
from tests.factories import bearer_client, deploy_now
from tests.support import call, eventually

URL = "/api/v1/services/iris-api/majors/1/deprecation"
CAST = ["admin", "owner", "maintainer", "member", "viewer", "outsider", "service_account"]
NEXT_YEAR = f"{datetime.now(UTC).year + 1}-03-31"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "who, code",
    [
        ("admin", 200),
        ("owner", 200),
        ("maintainer", 200),
        ("member", 403),
        ("viewer", 403),
        ("outsider", 404),
        ("service_account", 404),
    ],
)
def test_who_may_deprecate(cast, api, iris_service, who, code):
    response = api(cast[who]).put(URL, {"sunset": NEXT_YEAR, "note": "Move to /v2."}, format="json")
    assert response.status_code == code, response.content
    assert Deprecation.objects.exists() is (code == 200)


@pytest.mark.django_db
def test_deprecate_change_and_take_back(cast, api, iris_service):
    client = api(cast["owner"])
    first = client.put(URL, {"sunset": NEXT_YEAR, "note": "Move to /v2."}, format="json")
    assert first.status_code == 200
    assert first.json()["sunset"] == f"{NEXT_YEAR}T00:00:00Z" and first.json()["created_by"] == "olivia-owner"
    later = client.put(URL, {"sunset": f"{NEXT_YEAR}T12:00:00Z"}, format="json")
    assert later.json()["sunset"] == f"{NEXT_YEAR}T12:00:00Z" and later.json()["note"] == ""
    assert Deprecation.objects.count() == 1
    detail = client.get("/api/v1/services/iris-api").json()
    assert [d["major"] for d in detail["deprecations"]] == [1]

    assert client.delete(URL).status_code == 204
    assert client.delete(URL).status_code == 404
    assert client.get("/api/v1/services/iris-api").json()["deprecations"] == []
    actions = list(AuditEvent.objects.filter(action__startswith="service.").values_list("action", flat=True))
    assert actions.count("service.deprecate") == 2 and actions.count("service.undeprecate") == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url, body, fragment",
    [
        (URL.replace("/1/", "/7/"), {}, "no major version 7"),
        (URL, {"sunset": "2001-01-01"}, "in the future"),
        (URL, {"sunset": "next tuesday"}, "sunset"),
        (URL, {"sunset": "2027-02-30"}, "sunset"),
        (URL, {"sunset": "2027-13-01"}, "sunset"),
        (URL, {"note": "x" * 501}, "note"),
        (URL, {"colour": "red"}, "Unknown field"),
    ],
)
def test_bad_deprecations(cast, api, iris_service, url, body, fragment):
    response = api(cast["owner"]).put(url, body, format="json")
    assert response.status_code == 400 and fragment in response.json()["detail"], response.content


@pytest.mark.django_db
def test_the_service_page_deprecates_and_takes_back(client, cast, iris_service):
    client.force_login(cast["maintainer"])
    page = client.get("/services/iris-api/")
    assert b"Deprecate /v1" in page.content
    done = client.post("/services/iris-api/v1/deprecation", {"sunset": NEXT_YEAR, "note": "Use /v2"}, follow=True)
    assert b"is deprecated" in done.content and b"sunset " + NEXT_YEAR.encode() in done.content
    assert Deprecation.objects.get().sunset_at == datetime.fromisoformat(NEXT_YEAR).replace(tzinfo=UTC)
    refused = client.post("/services/iris-api/v1/deprecation", {"sunset": "2001-01-01"}, follow=True)
    assert b"The sunset must be in the future." in refused.content
    back = client.post("/services/iris-api/v1/deprecation", {"action": "undeprecate"}, follow=True)
    assert b"no longer deprecated" in back.content and not Deprecation.objects.exists()

    client.force_login(cast["member"])
    assert b"Deprecate /v1" not in client.get("/services/iris-api/").content
    client.post("/services/iris-api/v1/deprecation", {"sunset": NEXT_YEAR}, follow=True)
    assert not Deprecation.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_callers_of_a_deprecated_major_get_deprecation_and_sunset_headers(
    iris_service, member, owner, environments, service_account, gateway
):
    deploy_now(iris_service, member, environments["development"], iris_service.model.versions.get())
    services.grant_create(actor=owner, service=iris_service, user=service_account)
    token = bearer_client(service_account, scopes=["invoke"]).raw_token
    predict = f"{gateway.url}/serve/development/iris-api/v1/predict"
    body = {"instances": iris_instances(count=1)}
    assert eventually(lambda: call(predict, token=token, body=body)[0] == 200)
    assert "Deprecation" not in call(predict, token=token, body=body)[2]

    sunset = datetime.now(UTC).replace(microsecond=0) + timedelta(days=90)
    services.major_deprecate(actor=owner, service=iris_service, major=1, sunset_at=sunset, note="Move to /v2.")
    assert eventually(lambda: "Deprecation" in call(predict, token=token, body=body)[2])
    status, answer, headers = call(predict, token=token, body=body)
    since = Deprecation.objects.get().created_at
    assert status == 200 and answer["predictions"] == [0]
    assert headers["Deprecation"] == f"@{int(since.timestamp())}"
    assert parsedate_to_datetime(headers["Sunset"]) == sunset
    _, info, info_headers = call(predict.removesuffix("/predict"), token=token)
    assert info["deprecation"]["note"] == "Move to /v2." and info_headers["Deprecation"] == headers["Deprecation"]

    services.major_undeprecate(actor=owner, service=iris_service, major=1)
    assert eventually(lambda: (r := call(predict, token=token, body=body))[0] == 200 and "Deprecation" not in r[2])
