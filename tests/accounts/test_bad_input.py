"""Bad input answers 4xx with a message a person can act on, and changes nothing."""

import pytest

from accounts.models import AuditEvent, Membership, Team, User
from tests.factories import bearer_client, make_user

pytestmark = pytest.mark.django_db


def test_malformed_json(cast, api):
    response = api(cast["owner"]).generic(
        "POST", "/api/v1/teams/vision/members", '{"username": "x", ', content_type="application/json"
    )
    assert response.status_code == 400
    assert "JSON" in response.json()["detail"]


def test_json_that_is_not_an_object(cast, api):
    response = api(cast["owner"]).post("/api/v1/teams", ["vision"], format="json")
    assert response.status_code == 400
    assert "dictionary" in response.json()["detail"]


def test_form_encoded_body_is_refused(cast, api):
    response = api(cast["owner"]).post("/api/v1/teams", {"name": "x"})  # multipart
    assert response.status_code == 415
    assert "Send JSON: Content-Type: application/json" in response.json()["detail"]


def test_missing_field(cast, api):
    response = api(cast["owner"]).post("/api/v1/teams/vision/members", {"role": "member"}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert "username" in body["errors"]
    assert "username: This field is required." in body["detail"]


def test_unknown_field_is_refused_not_ignored(cast, api):
    make_user("newbie")
    response = api(cast["owner"]).post(
        "/api/v1/teams/vision/members", {"username": "newbie", "rol": "owner"}, format="json"
    )
    assert response.status_code == 400
    assert "rol" in response.json()["errors"]
    assert "Allowed fields: role, username" in response.json()["detail"]
    assert not Membership.objects.filter(user__username="newbie").exists()


def test_unknown_user(cast, api):
    response = api(cast["owner"]).post(
        "/api/v1/teams/vision/members", {"username": "ghost", "role": "member"}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["detail"].startswith("No user named 'ghost'")
    assert response.json()["errors"] == {"username": [response.json()["detail"]]}


def test_unknown_team(cast, api):
    response = api(cast["owner"]).get("/api/v1/teams/atlantis")
    assert response.status_code == 404
    assert response.json()["detail"] == "No team named 'atlantis' that you can see."


def test_role_that_does_not_exist(cast, api):
    make_user("newbie")
    response = api(cast["owner"]).post(
        "/api/v1/teams/vision/members", {"username": "newbie", "role": "emperor"}, format="json"
    )
    assert response.status_code == 400
    assert "Roles are: owner, maintainer, member, viewer" in response.json()["detail"]


def test_adding_an_existing_member_is_a_conflict(cast, api):
    response = api(cast["owner"]).post(
        "/api/v1/teams/vision/members", {"username": "mia-member", "role": "viewer"}, format="json"
    )
    assert response.status_code == 409
    assert "already member" in response.json()["detail"]


def test_the_last_owner_cannot_leave_or_be_demoted(cast, api):
    client = api(cast["owner"])
    response = client.delete("/api/v1/teams/vision/members/olivia-owner")
    assert response.status_code == 409
    assert "last owner" in response.json()["detail"]
    response = client.patch("/api/v1/teams/vision/members/olivia-owner", {"role": "viewer"}, format="json")
    assert response.status_code == 409
    assert Membership.objects.get(user=cast["owner"]).role == "owner"


def test_duplicate_team_name_is_a_conflict(cast, api):
    response = api(cast["outsider"]).post("/api/v1/teams", {"name": "vision"}, format="json")
    assert response.status_code == 409
    assert "already exists" in response.json()["detail"]
    assert Team.objects.count() == 1


@pytest.mark.parametrize("name", ["Vision Team", "UPPER", "a/b", "", "x" * 65])
def test_bad_team_name(cast, api, name):
    response = api(cast["outsider"]).post("/api/v1/teams", {"name": name}, format="json")
    assert response.status_code == 400
    assert "name" in response.json()["errors"]


def test_member_of_another_team_path_is_404(cast, api):
    response = api(cast["owner"]).patch(
        "/api/v1/teams/vision/members/oscar-outsider", {"role": "viewer"}, format="json"
    )
    assert response.status_code == 404
    assert "not a member" in response.json()["detail"]


@pytest.mark.parametrize(
    "payload, fragment",
    [
        ({"username": "bad name!"}, "username"),
        ({"username": "svc2", "is_service_account": True, "password": "a-long-passphrase-1"}, "no password"),
        ({"username": "svc3", "is_service_account": True, "roles": ["approver"]}, "cannot be approvers"),
        ({"username": "u4", "roles": ["wizard"]}, "Unknown role 'wizard'"),
        ({"username": "u5", "password": "short"}, "too short"),
        ({"username": "u6", "email": "not-an-email"}, "email"),
    ],
)
def test_bad_user_creation(cast, api, payload, fragment):
    before = User.objects.count()
    response = api(cast["admin"]).post("/api/v1/users", payload, format="json")
    assert response.status_code == 400, response.content
    assert fragment in response.json()["detail"]
    assert User.objects.count() == before


def test_duplicate_username_is_a_conflict(cast, api):
    response = api(cast["admin"]).post("/api/v1/users", {"username": "MIA-member"}, format="json")
    assert response.status_code == 409


def test_admin_cannot_remove_own_admin_role(cast, api):
    response = api(cast["admin"]).patch(f"/api/v1/users/{cast['admin'].username}", {"roles": []}, format="json")
    assert response.status_code == 409


def test_unknown_api_path_is_a_json_404(db, api, member):
    response = api(member).get("/api/v1/nowhere")
    assert response.status_code == 404


def test_bad_audit_filters(cast, api):
    client = api(cast["admin"])
    assert client.get("/api/v1/audit?action=nonsense").status_code == 400
    response = client.get("/api/v1/audit?since=yesterday")
    assert response.status_code == 400
    assert "since" in response.json()["errors"]


def test_failed_requests_write_no_audit_event(cast, api):
    client = api(cast["viewer"])
    before = AuditEvent.objects.count()
    client.post("/api/v1/teams/vision/members", {"username": "oscar-outsider", "role": "member"}, format="json")
    client.delete("/api/v1/teams/vision/members/mia-member")
    assert AuditEvent.objects.count() == before


def test_an_admin_token_without_write_scope_cannot_create_users(cast):
    client = bearer_client(cast["admin"], scopes=["read"])
    response = client.post("/api/v1/users", {"username": "sneaky", "roles": ["admin"]}, format="json")
    assert response.status_code == 403
    assert not User.objects.filter(username="sneaky").exists()
    assert client.get("/api/v1/audit").status_code == 200


@pytest.mark.parametrize("username", ["ghost", "mia-member"])
def test_tokens_for_others_do_not_reveal_which_users_exist(cast, api, username):
    response = api(cast["viewer"]).post("/api/v1/tokens", {"name": "x", "user": username}, format="json")
    assert response.status_code == 403


@pytest.mark.parametrize("username", ["ghost", "oscar-outsider"])
def test_adding_members_does_not_reveal_which_users_exist_to_viewers(cast, api, username):
    response = api(cast["viewer"]).post(
        "/api/v1/teams/vision/members", {"username": username, "role": "member"}, format="json"
    )
    assert response.status_code == 403


@pytest.mark.parametrize("since", ["2026-02-30", "99999-01-01", "2026-13-01T00:00"])
def test_impossible_audit_dates(cast, api, since):
    assert api(cast["admin"]).get(f"/api/v1/audit?since={since}").status_code == 400


def test_far_future_audit_page_date(cast):
    from django.test import Client

    client = Client()
    client.force_login(cast["admin"])
    response = client.get("/audit/?until=9999-12-31")
    assert response.status_code == 200 and "before the year 9999" in response.content.decode()


def test_a_team_named_like_a_removed_one_inherits_nobody(api, owner, outsider):
    from django.contrib.auth.models import Group

    leftover = Group.objects.create(name="team:zeta:owner")
    leftover.user_set.add(outsider)
    response = api(owner).post("/api/v1/teams", {"name": "zeta"}, format="json")
    assert response.status_code == 201, response.content
    assert api(outsider).get("/api/v1/teams/zeta").status_code == 404
