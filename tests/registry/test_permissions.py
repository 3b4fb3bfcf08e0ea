"""The permission matrix for registry actions: team roles decide who reads, registers, edits."""

import pytest

from tests.factories import make_version, register

pytestmark = pytest.mark.django_db

CAST = ["admin", "owner", "maintainer", "member", "viewer", "outsider", "service_account"]


def expect(**codes):
    return [pytest.param(who, codes[who], id=who) for who in CAST]


@pytest.fixture
def iris_v1(iris_model, owner, iris_file):
    make_version(iris_model, iris_file, actor=owner)
    return iris_model


@pytest.mark.parametrize(
    "who, code", expect(admin=200, owner=200, maintainer=200, member=200, viewer=200, outsider=404, service_account=404)
)
@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/models/iris",
        "/api/v1/models/iris/versions",
        "/api/v1/models/iris/versions/1.0.0",
        "/api/v1/models/iris/versions/1.0.0/artifact",
    ],
)
def test_read(cast, api, iris_v1, who, code, path):
    assert api(cast[who]).get(path).status_code == code


@pytest.mark.parametrize(
    "who, visible", expect(admin=1, owner=1, maintainer=1, member=1, viewer=1, outsider=0, service_account=0)
)
def test_list_shows_only_visible_models(cast, api, iris_v1, who, visible):
    assert api(cast[who]).get("/api/v1/models").json()["count"] == visible


@pytest.mark.parametrize(
    "who, code", expect(admin=201, owner=201, maintainer=201, member=201, viewer=403, outsider=404, service_account=404)
)
def test_create_model_in_the_team(cast, api, team, who, code):
    response = api(cast[who]).post("/api/v1/models", {"name": "new-model", "team": "vision"}, format="json")
    assert response.status_code == code, response.content


@pytest.mark.parametrize(
    "who, code", expect(admin=201, owner=201, maintainer=201, member=201, viewer=403, outsider=404, service_account=404)
)
def test_register_a_version(cast, api, iris_v1, iris_file, who, code):
    response = register(api(cast[who]), "iris", iris_file, version="1.1.0")
    assert response.status_code == code, response.content


@pytest.mark.parametrize(
    "who, code", expect(admin=200, owner=200, maintainer=200, member=403, viewer=403, outsider=404, service_account=404)
)
def test_edit_description(cast, api, iris_v1, who, code):
    response = api(cast[who]).patch("/api/v1/models/iris", {"description": "New words"}, format="json")
    assert response.status_code == code, response.content


def test_a_new_team_member_sees_existing_models(api, iris_v1, owner, outsider, team):
    from accounts import services

    client = api(outsider)
    assert client.get("/api/v1/models/iris").status_code == 404
    services.membership_add(actor=owner, team=team, user=outsider, role="viewer")
    assert client.get("/api/v1/models/iris").status_code == 200
