"""The permission matrix: each role of the cast, times each accounts API action.

What an outsider may not see answers 404; what a member may see but not do answers 403.
"""

import pytest

from accounts import services
from accounts.models import Membership
from tests.factories import make_user

pytestmark = pytest.mark.django_db

CAST = ["admin", "owner", "maintainer", "member", "viewer", "outsider", "service_account"]


def expect(**codes):
    return [pytest.param(who, codes[who], id=who) for who in CAST]


def call(client, method: str, path: str, body=None):
    return getattr(client, method)(path, body, format="json") if body is not None else getattr(client, method)(path)


@pytest.mark.parametrize(
    "who, code",
    expect(admin=200, owner=200, maintainer=200, member=200, viewer=200, outsider=404, service_account=404),
)
@pytest.mark.parametrize("path", ["/api/v1/teams/vision", "/api/v1/teams/vision/members"])
def test_read_team(cast, api, who, code, path):
    assert api(cast[who]).get(path).status_code == code


@pytest.mark.parametrize(
    "who, code",
    expect(admin=201, owner=201, maintainer=201, member=403, viewer=403, outsider=404, service_account=404),
)
def test_add_member(cast, api, who, code):
    make_user("newbie")
    response = api(cast[who]).post(
        "/api/v1/teams/vision/members", {"username": "newbie", "role": "member"}, format="json"
    )
    assert response.status_code == code, response.content
    assert Membership.objects.filter(team__name="vision", user__username="newbie").exists() == (code == 201)


@pytest.mark.parametrize(
    "who, code",
    expect(admin=201, owner=201, maintainer=403, member=403, viewer=403, outsider=404, service_account=404),
)
def test_add_maintainer(cast, api, who, code):
    make_user("newbie")
    response = api(cast[who]).post(
        "/api/v1/teams/vision/members", {"username": "newbie", "role": "maintainer"}, format="json"
    )
    assert response.status_code == code, response.content


@pytest.mark.parametrize(
    "who, code",
    expect(admin=200, owner=200, maintainer=200, member=403, viewer=403, outsider=404, service_account=404),
)
def test_change_a_members_role(cast, api, who, code):
    response = api(cast[who]).patch("/api/v1/teams/vision/members/mia-member", {"role": "viewer"}, format="json")
    assert response.status_code == code, response.content
    role = Membership.objects.get(team__name="vision", user__username="mia-member").role
    assert role == ("viewer" if code == 200 else "member")


@pytest.mark.parametrize(
    "who, code",
    expect(admin=200, owner=200, maintainer=403, member=403, viewer=403, outsider=404, service_account=404),
)
def test_promote_to_owner(cast, api, who, code):
    response = api(cast[who]).patch("/api/v1/teams/vision/members/victor-viewer", {"role": "owner"}, format="json")
    assert response.status_code == code, response.content


@pytest.mark.parametrize(
    "who, code",
    # the member removing themselves is leaving the team, which anyone may do
    expect(admin=204, owner=204, maintainer=204, member=204, viewer=403, outsider=404, service_account=404),
)
def test_remove_a_member(cast, api, who, code):
    response = api(cast[who]).delete("/api/v1/teams/vision/members/mia-member")
    assert response.status_code == code, response.content
    assert Membership.objects.filter(team__name="vision", user__username="mia-member").exists() == (code != 204)


@pytest.mark.parametrize(
    "who, code",
    expect(admin=204, owner=204, maintainer=204, member=403, viewer=403, outsider=404, service_account=404),
)
def test_remove_a_maintainer(cast, api, who, code):
    # the maintainer removing themselves is leaving
    response = api(cast[who]).delete("/api/v1/teams/vision/members/mark-maintainer")
    assert response.status_code == code, response.content


@pytest.mark.parametrize(
    "who, code",
    expect(admin=201, owner=201, maintainer=201, member=201, viewer=201, outsider=201, service_account=403),
)
def test_create_team(cast, api, who, code):
    response = api(cast[who]).post("/api/v1/teams", {"name": f"team-{who.replace('_', '-')}"}, format="json")
    assert response.status_code == code, response.content
    if code == 201:
        assert response.json()["your_role"] == "owner"


@pytest.mark.parametrize(
    "who, code",
    expect(admin=201, owner=403, maintainer=403, member=403, viewer=403, outsider=403, service_account=403),
)
def test_create_user(cast, api, who, code):
    response = api(cast[who]).post(
        "/api/v1/users", {"username": "fresh", "password": "a-long-passphrase-1"}, format="json"
    )
    assert response.status_code == code, response.content


@pytest.mark.parametrize(
    "who, code",
    expect(admin=200, owner=403, maintainer=403, member=403, viewer=403, outsider=403, service_account=403),
)
def test_read_audit_log(cast, api, who, code):
    assert api(cast[who]).get("/api/v1/audit").status_code == code


@pytest.mark.parametrize(
    "who, code",
    expect(admin=200, owner=200, maintainer=200, member=200, viewer=200, outsider=200, service_account=200),
)
def test_me(cast, api, who, code):
    response = api(cast[who]).get("/api/v1/users/me")
    assert response.status_code == code
    assert response.json()["username"] == cast[who].username


def test_team_list_shows_only_my_teams(cast, api):
    services.team_create(actor=cast["outsider"], name="secret-lab")
    names = [t["name"] for t in api(cast["member"]).get("/api/v1/teams").json()["results"]]
    assert names == ["vision"]
    admin_names = [t["name"] for t in api(cast["admin"]).get("/api/v1/teams").json()["results"]]
    assert set(admin_names) == {"vision", "secret-lab"}


def test_team_list_query_count_is_constant(cast, api, django_assert_max_num_queries):
    client = api(cast["owner"])
    for i in range(15):
        services.team_create(actor=cast["owner"], name=f"team-{i}")
    with django_assert_max_num_queries(8):
        response = client.get("/api/v1/teams")
    assert response.json()["count"] == 16


def test_removed_member_loses_access_at_once(cast, api):
    client = api(cast["member"])
    assert client.get("/api/v1/teams/vision").status_code == 200
    assert api(cast["owner"]).delete("/api/v1/teams/vision/members/mia-member").status_code == 204
    assert client.get("/api/v1/teams/vision").status_code == 404


@pytest.mark.parametrize(
    "who, code",
    expect(admin=201, owner=403, maintainer=403, member=403, viewer=403, outsider=403, service_account=403),
)
def test_only_approvers_and_admins_create_teams_when_so_configured(cast, api, approver, settings, who, code):
    settings.TEAM_CREATORS = "approvers"
    response = api(cast[who]).post("/api/v1/teams", {"name": f"new-{who.replace('_', '-')}"}, format="json")
    assert response.status_code == code, response.content
    if code == 403 and who != "service_account":
        assert "approvers and admins" in response.json()["detail"]
    assert api(approver).post("/api/v1/teams", {"name": "by-approver"}, format="json").status_code == 201


def test_the_team_page_offers_a_new_team_only_to_those_who_may_create_one(member, approver, client, settings):
    settings.TEAM_CREATORS = "approvers"
    client.force_login(member)
    page = client.get("/teams/").content.decode()
    assert "Create team" not in page and "created by approvers and admins" in page
    client.force_login(approver)
    assert "Create team" in client.get("/teams/").content.decode()
