"""Each audited action leaves one event saying who, what, which object, when and from where."""

import pytest
from django.test import Client

from accounts import services
from accounts.models import AppendOnlyError, AuditEvent
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db


def last(action: str) -> AuditEvent:
    return AuditEvent.objects.filter(action=action).order_by("-id").first()


def test_login_and_failed_login_and_logout(member):
    client = Client(HTTP_USER_AGENT="pytest-browser", REMOTE_ADDR="10.1.2.3")
    response = client.post("/login/", {"username": member.username, "password": "wrong"})
    assert response.status_code == 200
    failed = last("auth.login_failed")
    assert failed.actor is None and failed.actor_username == member.username
    assert failed.ip == "10.1.2.3" and failed.user_agent == "pytest-browser" and failed.source == "web"
    assert "wrong" not in str(failed.data)

    response = client.post("/login/", {"username": member.username, "password": PASSWORD})
    assert response.status_code == 302
    login = last("auth.login")
    assert login.actor == member and login.ip == "10.1.2.3"

    client.post("/logout/")
    assert last("auth.logout").actor == member


def test_failed_login_for_unknown_user(db):
    Client().post("/login/", {"username": "nobody", "password": "x"})
    event = last("auth.login_failed")
    assert event.actor_username == "nobody" and event.data["known_user"] is False


def test_token_create_and_revoke_via_api(api, member):
    client = api(member)
    body = client.post("/api/v1/tokens", {"name": "audited"}, format="json").json()
    created = last("token.create")
    assert created.actor == member and created.source == "api"
    assert created.target_type == "apitoken" and created.target_id == str(body["id"])
    assert body["token"] not in str(created.data) and created.data["prefix"] == body["prefix"]
    client.delete(f"/api/v1/tokens/{body['id']}")
    revoked = last("token.revoke")
    assert revoked.actor == member and revoked.target_id == str(body["id"])


def test_membership_changes(team, owner, outsider, api):
    client = api(owner)
    client.post("/api/v1/teams/vision/members", {"username": outsider.username, "role": "viewer"}, format="json")
    added = last("membership.add")
    assert (added.actor, added.team, added.target_id, added.data["role"]) == (owner, team, str(outsider.pk), "viewer")

    client.patch(f"/api/v1/teams/vision/members/{outsider.username}", {"role": "member"}, format="json")
    changed = last("membership.change")
    assert changed.data["from"] == "viewer" and changed.data["to"] == "member" and changed.team_name == "vision"

    client.delete(f"/api/v1/teams/vision/members/{outsider.username}")
    removed = last("membership.remove")
    assert removed.data["role"] == "member" and removed.target_repr == outsider.username


def test_team_creation(api, outsider):
    api(outsider).post("/api/v1/teams", {"name": "new-team"}, format="json")
    event = last("team.create")
    assert event.actor == outsider and event.team_name == "new-team"


def test_user_creation_and_role_change(api, admin):
    client = api(admin)
    client.post("/api/v1/users", {"username": "it-person"}, format="json")
    assert last("user.create").target_repr == "it-person"
    client.patch("/api/v1/users/it-person", {"roles": ["approver"]}, format="json")
    event = last("user.change")
    assert event.data["changes"]["is_approver"] == [False, True] and event.actor == admin


def test_role_change_in_django_admin_is_audited(admin, member):
    client = Client()
    client.force_login(admin)
    url = f"/admin/accounts/user/{member.pk}/change/"
    form = client.get(url).context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and not isinstance(v, list | tuple)}
    data.update(
        username=member.username,
        is_active="on",
        is_approver="on",
        date_joined_0=member.date_joined.strftime("%Y-%m-%d"),
        date_joined_1=member.date_joined.strftime("%H:%M:%S"),
    )
    data.pop("password", None)
    data.pop("last_login", None)
    data = {k: v for k, v in data.items() if not isinstance(v, bool) or v}
    for key in ("is_staff", "is_superuser", "is_service_account"):
        data.pop(key, None)
    response = client.post(url, data)
    assert response.status_code == 302, response.content[:2000]
    member.refresh_from_db()
    assert member.is_approver
    event = last("user.change")
    assert event.data["changes"]["is_approver"] == [False, True] and event.source == "admin"


def test_the_log_is_append_only(member):
    event = services.audit_event_record(actor=member, action="auth.login")
    event.action = "auth.logout"
    with pytest.raises(AppendOnlyError):
        event.save()
    with pytest.raises(AppendOnlyError):
        event.delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(pk=event.pk).update(action="auth.logout")
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.all().delete()


def test_admin_cannot_edit_or_delete_events_in_the_admin(admin, member):
    event = services.audit_event_record(actor=member, action="auth.login")
    client = Client()
    client.force_login(admin)
    assert client.get(f"/admin/accounts/auditevent/{event.pk}/change/").status_code == 200  # read-only view
    assert client.post(f"/admin/accounts/auditevent/{event.pk}/change/", {"action": "x"}).status_code == 403
    assert client.post(f"/admin/accounts/auditevent/{event.pk}/delete/").status_code == 403
    assert client.get("/admin/accounts/auditevent/add/").status_code == 403
    assert AuditEvent.objects.get(pk=event.pk).action == "auth.login"


def test_audit_api_filters(cast, api):
    client = api(cast["admin"])
    results = client.get("/api/v1/audit?action=membership&team=vision").json()["results"]
    assert results and all(r["action"].startswith("membership.") and r["team"] == "vision" for r in results)
    results = client.get("/api/v1/audit?actor=olivia-owner&action=team.create").json()["results"]
    assert [r["target_repr"] for r in results] == ["vision"]
    assert client.get("/api/v1/audit?since=2999-01-01").json()["count"] == 0
