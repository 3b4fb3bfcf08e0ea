"""Single sign-on through a real OpenID Connect provider (npm's certified oidc-provider,
started by the fixture) and a real Chromium: the button, the provider's sign-in, users
created with mapped teams, roles and the approver role, memberships refreshed at the next
sign-in, sign-out at the portal and the provider, and the password form switched off."""

from __future__ import annotations

import copy
import re

import pytest
from django.test import Client
from playwright.sync_api import expect

from accounts import services
from accounts.mapping import parse_group_list, parse_team_map
from accounts.models import AuditAction, AuditEvent, ExternalIdentity, IdentitySource, Membership, Team, User
from tests.accounts.oidc_provider import server
from tests.factories import PASSWORD, make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

TEAM_MAP = "ml-platform=platform:owner, data-science=ds:member, ds-leads=ds:maintainer"
PROVIDER_PASSWORD = "carol-at-the-provider"


@pytest.fixture(scope="session")
def oidc_provider(live_server, tmp_path_factory):
    provider = server.start(portal_url=live_server.url, directory=tmp_path_factory.mktemp("oidc-provider"))
    yield provider
    server.stop_provider(provider)


@pytest.fixture
def sso(settings, oidc_provider, admin):
    settings.OIDC_ENABLED = True
    settings.OIDC_ISSUER = oidc_provider.issuer
    settings.OIDC_CLIENT_ID = oidc_provider.client_id
    settings.OIDC_CLIENT_SECRET = oidc_provider.client_secret
    settings.OIDC_PROVIDER_NAME = "Test IdP"
    settings.OIDC_SCOPES = "openid email profile groups"
    settings.OIDC_TEAM_MAP = parse_team_map(TEAM_MAP, "OIDC_TEAM_MAP")
    settings.OIDC_APPROVER_GROUPS = parse_group_list("it-approvers")
    # As settings do when OIDC_ISSUER is set: the sign-out form may be redirected to the provider.
    policy = copy.deepcopy(settings.CONTENT_SECURITY_POLICY)
    policy["DIRECTIVES"]["form-action"] = ["'self'", oidc_provider.issuer]
    settings.CONTENT_SECURITY_POLICY = policy
    for name in ("platform", "ds", "web"):
        services.team_create(actor=admin, name=name)
    oidc_provider.set_accounts({})
    return oidc_provider


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(base_url=live_server.url)
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def carol(groups: list[str]) -> dict:
    return {
        "carol": {
            "password": PROVIDER_PASSWORD,
            "email": "carol@example.com",
            "email_verified": True,
            "name": "Carol Chen",
            "groups": groups,
        }
    }


def sign_in_with_provider(page, *, asked_for_password: bool = True) -> None:
    page.goto("/login/")
    page.get_by_role("link", name="Sign in with Test IdP").click()
    if asked_for_password:
        page.get_by_label("Provider username").fill("carol")
        page.get_by_label("Provider password").fill(PROVIDER_PASSWORD)
        page.get_by_role("button", name="Continue").click()
    expect(page.get_by_role("heading", name="Hello, carol")).to_be_visible()


def roles_of(user: User) -> dict[str, tuple[str, str]]:
    return {m.team.name: (m.role, m.managed_by) for m in Membership.objects.filter(user=user).select_related("team")}


def test_first_sign_in_creates_the_user_with_the_mapped_teams_roles_and_approver(sso, page):
    sso.set_accounts(carol(["data-science", "ml-platform", "it-approvers", "unmapped"]))

    sign_in_with_provider(page)

    user = User.objects.get(username="carol")
    assert user.email == "carol@example.com"
    assert not user.has_usable_password()
    assert user.is_approver
    assert roles_of(user) == {"ds": ("member", "oidc"), "platform": ("owner", "oidc")}
    identity = ExternalIdentity.objects.get(user=user)
    assert (identity.source, identity.issuer, identity.subject) == (IdentitySource.OIDC, sso.issuer, "carol")
    # Team permissions follow the membership: the team's page opens and lists her.
    page.goto("/teams/platform/")
    expect(page.get_by_role("cell", name="carol", exact=False)).to_be_visible()
    assert AuditEvent.objects.filter(action=AuditAction.MEMBERSHIP_ADD, target_id=str(user.pk)).count() == 2


def test_next_sign_in_refreshes_directory_memberships_and_leaves_hand_made_ones(sso, page, admin, live_server):
    sso.set_accounts(carol(["data-science", "ml-platform", "it-approvers"]))
    sign_in_with_provider(page)
    user = User.objects.get(username="carol")
    # Made by hand in the portal: no sign-in may change or remove it.
    services.membership_add(actor=admin, team=Team.objects.get(name="web"), user=user, role="viewer")

    # Sign-out ends the portal session, then the provider's (RP-initiated logout).
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("button", name="Yes, sign me out").click()
    expect(page).to_have_url(re.compile(re.escape(live_server.url) + "/login/"))
    page.goto("/teams/")
    expect(page).to_have_url(re.compile("/login/"))

    sso.set_accounts(carol(["ds-leads"]))
    # The provider asks for the password again: its session ended with the portal's.
    sign_in_with_provider(page, asked_for_password=True)

    user.refresh_from_db()
    assert roles_of(user) == {"ds": ("maintainer", "oidc"), "web": ("viewer", "")}
    assert not user.is_approver
    assert not user.groups.filter(name="team:platform:owner").exists()
    assert user.groups.filter(name="team:ds:maintainer").exists()
    assert ExternalIdentity.objects.get(user=user).groups == ["ds-leads"]


def test_password_form_switched_off_leaves_single_sign_on_and_the_admins_page(sso, page, admin, member):
    staff = Client()
    staff.force_login(admin)
    change_page = staff.get("/admin/accounts/signinsettings/")
    assert change_page.status_code == 302  # the one row's change page
    assert staff.get(change_page.url).status_code == 200
    response = staff.post(change_page.url, {}, follow=True)  # the box unticked
    assert response.status_code == 200
    assert not services.sign_in_settings_get().password_sign_in
    event = AuditEvent.objects.get(action=AuditAction.SIGN_IN_SETTINGS_CHANGE)
    assert event.actor == admin
    assert event.data == {"changes": {"password_sign_in": [True, False]}}

    page.goto("/login/")
    expect(page.get_by_role("link", name="Sign in with Test IdP")).to_be_visible()
    expect(page.get_by_label("Password")).to_have_count(0)
    expect(page.get_by_text("can still sign in with their password")).to_be_visible()

    # Refused on the server too, for the page and the token sign-in alike.
    refused = Client().post("/login/", {"username": member.username, "password": PASSWORD})
    assert refused.status_code == 403
    assert "switched off" in refused.content.decode()
    assert "_auth_user_id" not in refused.client.session
    token = Client().post(
        "/api/v1/auth/token",
        {"username": member.username, "password": PASSWORD, "name": "laptop"},
        content_type="application/json",
    )
    assert token.status_code == 400, token.content
    assert "password sign-in is switched off here" in token.json()["detail"]
    # A superuser still gets in at the admin's sign-in page.
    admin_client = Client()
    signed_in = admin_client.post("/admin/login/", {"username": admin.username, "password": PASSWORD})
    assert signed_in.status_code == 302
    assert admin_client.session.get("_auth_user_id") == str(admin.pk)

    # And single sign-on still works.
    sso.set_accounts(carol(["data-science"]))
    sign_in_with_provider(page)


def test_an_unverified_email_never_links_to_an_existing_account(sso, page):
    local = make_user("carol-local", email="carol@example.com")
    accounts = carol(["data-science"])
    accounts["carol"]["email_verified"] = False
    sso.set_accounts(accounts)

    # Through a page that needed signing in: single sign-on comes back to it.
    page.goto("/teams/")
    page.get_by_role("link", name="Sign in with Test IdP").click()
    page.get_by_label("Provider username").fill("carol")
    page.get_by_label("Provider password").fill(PROVIDER_PASSWORD)
    page.get_by_role("button", name="Continue").click()
    expect(page).to_have_url(re.compile(r"/teams/$"))

    created = User.objects.get(username="carol")
    assert created.pk != local.pk
    assert created.email == ""
    assert not ExternalIdentity.objects.filter(user=local).exists()


def test_a_refused_sign_in_is_explained_and_audited(sso, page, settings):
    settings.OIDC_CREATE_USERS = False
    sso.set_accounts(carol(["data-science"]))

    page.goto("/login/")
    page.get_by_role("link", name="Sign in with Test IdP").click()
    page.get_by_label("Provider username").fill("carol")
    page.get_by_label("Provider password").fill(PROVIDER_PASSWORD)
    page.get_by_role("button", name="Continue").click()

    expect(page.get_by_text("You have no portal account yet")).to_be_visible()
    assert not User.objects.filter(username="carol").exists()
    failed = AuditEvent.objects.get(action=AuditAction.LOGIN_FAILED)
    assert failed.data["source"] == "oidc"
