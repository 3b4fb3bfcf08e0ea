"""The HTML pages: what people see and can do in the browser."""

import pytest
from django.test import Client

from accounts.models import ApiToken, Membership
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_anonymous_visitors_are_sent_to_sign_in(db):
    for path in ["/", "/teams/", "/tokens/", "/audit/"]:
        response = Client().get(path)
        assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_sign_in_page_and_sign_in(member):
    client = Client()
    assert b"Sign in to Portal" in client.get("/login/").content
    response = client.post("/login/", {"username": member.username, "password": PASSWORD}, follow=True)
    assert response.redirect_chain[-1][0] == "/"
    assert b"Hello, mia-member" in response.content


def test_wrong_password_says_so_without_saying_which_part(member):
    response = Client().post("/login/", {"username": member.username, "password": "nope"})
    assert response.status_code == 200
    assert b"do not match an account" in response.content


def test_service_accounts_cannot_sign_in(service_account):
    service_account.set_password(PASSWORD)
    service_account.save()
    client = Client()
    response = client.post("/login/", {"username": service_account.username, "password": PASSWORD})
    assert response.status_code == 200 and b"Service accounts use API tokens" in response.content
    # A session forced into existence is not honoured either.
    client.force_login(service_account)
    assert client.get("/").status_code == 302


def test_logout_needs_post(member):
    client = signed_in(member)
    assert client.get("/logout/").status_code == 405
    assert client.post("/logout/").status_code == 302
    assert client.get("/").status_code == 302


def test_dashboard_shows_my_teams_and_activity(team, member):
    content = signed_in(member).get("/").content.decode()
    assert 'href="/teams/vision/"' in content
    assert "Member added" in content


def test_dashboard_empty_state(outsider):
    content = signed_in(outsider).get("/").content.decode()
    assert "You are not in a team yet" in content


def test_team_page_for_members_and_404_for_outsiders(team, viewer, outsider):
    response = signed_in(viewer).get("/teams/vision/")
    assert response.status_code == 200
    assert b"mark-maintainer" in response.content
    assert b"Add a member" not in response.content  # viewers cannot manage
    response = signed_in(outsider).get("/teams/vision/")
    assert response.status_code == 404


def test_create_team_from_the_page(outsider):
    response = signed_in(outsider).post("/teams/", {"name": "nlp", "description": "Language"}, follow=True)
    assert response.redirect_chain[-1][0] == "/teams/nlp/"
    assert b"You are its owner" in response.content


def test_create_team_with_a_bad_name_shows_the_error(outsider):
    response = signed_in(outsider).post("/teams/", {"name": "Not A Slug"})
    assert response.status_code == 400
    assert b"letters, numbers, underscores or hyphens" in response.content


def test_team_list_search_and_pagination(owner):
    from accounts import services

    for i in range(30):
        services.team_create(actor=owner, name=f"squad-{i:02d}")
    client = signed_in(owner)
    page1 = client.get("/teams/").content.decode()
    assert "Page 1 of 2" in page1
    found = client.get("/teams/?q=squad-07").content.decode()
    assert "squad-07" in found and "squad-08" not in found
    assert "None of your teams matches" in client.get("/teams/?q=zzz").content.decode()


def test_maintainer_adds_and_removes_a_member_through_the_page(team, maintainer, outsider):
    client = signed_in(maintainer)
    response = client.post("/teams/vision/", {"username": outsider.username, "role": "member"}, follow=True)
    assert b"Added oscar-outsider as member" in response.content
    confirm = client.get(f"/teams/vision/members/{outsider.username}/remove")
    assert b"Remove oscar-outsider from vision?" in confirm.content
    client.post(f"/teams/vision/members/{outsider.username}/remove")
    assert not Membership.objects.filter(user=outsider).exists()


def test_maintainer_cannot_add_an_owner_through_the_page(team, maintainer, outsider):
    response = signed_in(maintainer).post("/teams/vision/", {"username": outsider.username, "role": "owner"})
    assert response.status_code == 400
    assert not Membership.objects.filter(user=outsider).exists()


def test_the_team_page_tells_non_managers_nothing_about_who_exists(team, viewer, outsider):
    """Someone who may not manage members gets the same 403 whether the username exists or not."""
    client = signed_in(viewer)
    answers = [
        client.post("/teams/vision/", {"username": name, "role": "member"}) for name in (outsider.username, "nobody")
    ]
    assert [a.status_code for a in answers] == [403, 403]
    assert "owner or maintainer" in answers[0].content.decode()
    main = [a.content.decode().split("<main", 1)[1].split("</main>", 1)[0] for a in answers]
    assert main[0].replace(outsider.username, "") == main[1].replace("nobody", "")
    assert not Membership.objects.filter(user=outsider).exists()


def test_change_role_through_the_page(team, owner, member):
    response = signed_in(owner).post(f"/teams/vision/members/{member.username}/role", {"role": "viewer"}, follow=True)
    assert b"mia-member is now viewer" in response.content


def test_member_cannot_change_roles_through_the_page(team, member, viewer):
    response = signed_in(member).post(f"/teams/vision/members/{viewer.username}/role", {"role": "owner"}, follow=True)
    assert b"owner or maintainer" in response.content
    assert Membership.objects.get(user=viewer).role == "viewer"


def test_token_page_shows_a_new_token_once(member):
    client = signed_in(member)
    response = client.post("/tokens/", {"name": "notebook", "expires_in_days": "30", "scopes": ["read", "write"]})
    assert response.status_code == 201
    assert "no-store" in response["Cache-Control"]
    raw = response.context["created"]["secret"]
    assert raw.encode() in response.content
    again = client.get("/tokens/")
    assert raw.encode() not in again.content
    assert ApiToken.objects.get(user=member).prefix.encode() in again.content


def test_token_form_errors(member):
    response = signed_in(member).post("/tokens/", {"name": "", "expires_in_days": "30", "scopes": ["read"]})
    assert response.status_code == 400
    assert b"This field is required" in response.content
    assert not ApiToken.objects.exists()


def test_revoke_asks_for_confirmation(member):
    from accounts import services

    token, _ = services.token_create(actor=member, user=member, name="x")
    client = signed_in(member)
    assert b"Revoke token" in client.get(f"/tokens/{token.pk}/revoke").content
    token.refresh_from_db()
    assert token.revoked_at is None
    client.post(f"/tokens/{token.pk}/revoke")
    token.refresh_from_db()
    assert token.revoked_at is not None


def test_cannot_revoke_someone_elses_token_through_the_page(member, outsider):
    from accounts import services

    token, _ = services.token_create(actor=member, user=member, name="x")
    assert signed_in(outsider).post(f"/tokens/{token.pk}/revoke").status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None


def test_audit_page_is_for_admins(cast):
    assert signed_in(cast["owner"]).get("/audit/").status_code == 403
    response = signed_in(cast["admin"]).get("/audit/?action=membership.add&team=vision")
    assert response.status_code == 200
    content = response.content.decode()
    assert "Member added" in content and "Team created" not in content.split("<tbody>")[1]


def test_audit_page_bad_dates_show_an_error(cast):
    response = signed_in(cast["admin"]).get("/audit/?since=not-a-date")
    assert response.status_code == 200
    assert "Enter a valid date" in response.content.decode()


def test_csrf_is_enforced(member):
    client = Client(enforce_csrf_checks=True)
    client.force_login(member)
    assert client.post("/teams/", {"name": "sneaky"}).status_code == 403


def test_admin_has_every_object(admin):
    client = signed_in(admin)
    for model in ["user", "team", "membership", "apitoken", "auditevent", "teamgroupobjectpermission"]:
        assert client.get(f"/admin/accounts/{model}/").status_code == 200, model


def test_pages_have_a_viewport_and_landmarks(member):
    content = signed_in(member).get("/").content.decode()
    assert 'name="viewport"' in content and "<main" in content and 'aria-label="Main"' in content


def test_team_created_in_the_admin_gets_roles_and_an_owner(admin):
    inline = {"memberships-TOTAL_FORMS": "0", "memberships-INITIAL_FORMS": "0"}
    response = signed_in(admin).post("/admin/accounts/team/add/", {"name": "from-admin", "description": "x", **inline})
    assert response.status_code == 302, response.content[:3000]
    membership = Membership.objects.get(team__name="from-admin")
    assert membership.user == admin and membership.role == "owner"
    assert admin.has_perm("accounts.manage_members", membership.team)


def test_membership_added_in_the_admin_goes_through_the_rules(admin, team, outsider):
    client = signed_in(admin)
    response = client.post("/admin/accounts/membership/add/", {"team": team.pk, "user": outsider.pk, "role": "viewer"})
    assert response.status_code == 302
    assert outsider.has_perm("accounts.view_team", team)
    # removing the last owner is refused with the service's message
    owner_membership = Membership.objects.get(team=team, role="owner")
    response = client.post(f"/admin/accounts/membership/{owner_membership.pk}/delete/", {"post": "yes"}, follow=True)
    assert response.status_code == 200
    assert "last owner" in response.content.decode()
    assert Membership.objects.filter(pk=owner_membership.pk).exists()
