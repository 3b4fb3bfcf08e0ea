"""Who a single sign-on is, and what its groups give: the account matching rules, the group
map's syntax, memberships kept apart from hand-made ones, and settings that refuse a half
configuration. (The whole flow through a real provider and browser: test_oidc_browser.py.)"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from accounts import services
from accounts.mapping import parse_group_list, parse_team_map, teams_for
from accounts.models import ExternalIdentity, Membership, User
from accounts.sso import SignInRefused, oidc_sign_in
from scripts.stack import ROOT
from tests.factories import make_user
from tests.ports import port

ISSUER = "https://login.example.com/realms/company"


@pytest.fixture
def oidc(settings, admin):
    settings.OIDC_ENABLED = True
    settings.OIDC_ISSUER = ISSUER
    settings.OIDC_CLIENT_ID = "portal"
    settings.OIDC_MATCH_CLAIM = "email"
    settings.OIDC_TEAM_MAP = parse_team_map("data-science=ds:member, ds-leads=ds:owner", "OIDC_TEAM_MAP")
    settings.OIDC_APPROVER_GROUPS = parse_group_list("it-approvers")
    services.team_create(actor=admin, name="ds")
    return settings


def claims(sub: str = "s-1", **extra) -> dict:
    return {"sub": sub, "preferred_username": "frank", "email": "frank@example.com", "email_verified": True, **extra}


# ---------------------------------------------------------------- the group map


def test_the_group_map_takes_the_highest_role_per_team_and_ignores_case():
    rules = parse_team_map("Data-Science=ds:member,\n ds-leads = ds:maintainer , ops=web:viewer", "OIDC_TEAM_MAP")
    assert teams_for(["data-science", "DS-LEADS"], rules) == {"ds": "maintainer"}
    assert teams_for(["ops", "data-science"], rules) == {"ds": "member", "web": "viewer"}
    assert teams_for([], rules) == {}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("data-science", "is not of the form group=team:role"),
        ("data-science=ds", "is not of the form group=team:role"),
        ("=ds:member", "is not of the form group=team:role"),
        ("data-science=ds:boss", "has the role 'boss'; use one of viewer, member, maintainer, owner"),
    ],
)
def test_a_bad_group_map_names_the_variable_and_the_entry(text, says):
    with pytest.raises(ImproperlyConfigured) as error:
        parse_team_map(text, "LDAP_TEAM_MAP")
    assert str(error.value).startswith("LDAP_TEAM_MAP: ")
    assert says in str(error.value)


def _settings_error(**env: str) -> str:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OIDC_", "LDAP_", "DJANGO_SETTINGS"))}
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env={**base, "DJANGO_SETTINGS_MODULE": "portal.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0, "the settings should have refused this configuration"
    return done.stderr.strip().splitlines()[-1]


def test_settings_refuse_a_half_configured_single_sign_on_without_showing_the_secret():
    error = _settings_error(OIDC_CLIENT_ID="portal", OIDC_CLIENT_SECRET="s3cret-value-never-shown")
    assert "Single sign-on is half configured: OIDC_ISSUER is not set" in error
    assert "s3cret-value-never-shown" not in error
    assert "OIDC_CLIENT_ID is not set" in _settings_error(OIDC_ISSUER=ISSUER)
    assert "OIDC_TEAM_MAP: 'ds' is not of the form" in _settings_error(OIDC_TEAM_MAP="ds")


def test_settings_refuse_a_directory_without_a_user_search_base():
    error = _settings_error(LDAP_SERVER_URI="ldap://127.0.0.1:1", LDAP_BIND_PASSWORD="bind-secret-never-shown")
    assert "LDAP_USER_SEARCH_BASE is not" in error
    assert "bind-secret-never-shown" not in error


# ---------------------------------------------------------------- who a sign-in is


def test_a_verified_email_links_an_existing_account_and_the_subject_keeps_it(oidc):
    frank = make_user("frank.local", email="Frank@Example.com")

    assert oidc_sign_in(claims=claims()) == frank
    # Later the provider changes his email: the (issuer, sub) link still finds him.
    assert oidc_sign_in(claims=claims(email="f.smith@example.com")) == frank
    frank.refresh_from_db()
    assert frank.email == "f.smith@example.com"
    assert ExternalIdentity.objects.filter(user=frank).count() == 1


def test_an_unverified_email_or_a_service_account_is_never_matched(oidc):
    make_user("frank", email="frank@example.com")
    robot = make_user("robot", email="robot@example.com", is_service_account=True)

    unverified = oidc_sign_in(claims=claims(email_verified=False))
    assert unverified.username == "frank-2"  # a new account; the name was taken
    assert unverified.email == ""
    other = oidc_sign_in(claims=claims(sub="s-2", email="robot@example.com", preferred_username="robot"))
    assert other != robot
    assert not other.is_service_account


def test_an_account_linked_to_another_subject_is_not_taken_by_a_second_one(oidc):
    first = oidc_sign_in(claims=claims())
    with pytest.raises(SignInRefused, match="linked to another"):
        oidc_sign_in(claims=claims(sub="s-2"))
    assert User.objects.filter(email="frank@example.com").get() == first


def test_no_new_accounts_when_the_portal_does_not_create_them(oidc):
    oidc.OIDC_CREATE_USERS = False
    with pytest.raises(SignInRefused, match="Ask a portal admin to create one"):
        oidc_sign_in(claims=claims())
    assert not User.objects.filter(username="frank").exists()


def test_a_deactivated_account_cannot_sign_in(oidc, admin):
    frank = oidc_sign_in(claims=claims())
    services.user_update(actor=admin, user=frank, is_active=False)
    with pytest.raises(SignInRefused, match="deactivated"):
        oidc_sign_in(claims=claims())


# ---------------------------------------------------------------- memberships


def test_a_role_changed_by_hand_is_the_portals_from_then_on(oidc, admin):
    frank = oidc_sign_in(claims=claims(groups=["data-science"]))
    ds = Membership.objects.get(user=frank).team
    services.membership_change_role(actor=admin, team=ds, user=frank, role="maintainer")

    oidc_sign_in(claims=claims(groups=[]))

    kept = Membership.objects.get(user=frank, team=ds)
    assert (kept.role, kept.managed_by) == ("maintainer", "")


def test_the_directory_never_removes_a_teams_last_owner(oidc, admin):
    frank = oidc_sign_in(claims=claims(groups=["ds-leads"]))
    ds = Membership.objects.get(user=frank).team
    services.membership_remove(actor=admin, team=ds, user=admin)  # frank is now the only owner

    oidc_sign_in(claims=claims(groups=[]))

    assert Membership.objects.get(user=frank, team=ds).role == "owner"


def test_the_approver_role_follows_the_group_only_when_the_directory_gave_it(oidc, admin):
    frank = oidc_sign_in(claims=claims(groups=["it-approvers"]))
    assert frank.is_approver
    frank = oidc_sign_in(claims=claims(groups=[]))
    assert not frank.is_approver

    services.user_update(actor=admin, user=frank, roles=["approver"])  # by hand
    frank = oidc_sign_in(claims=claims(groups=["it-approvers"]))
    frank = oidc_sign_in(claims=claims(groups=[]))
    assert frank.is_approver


# ---------------------------------------------------------------- the pages, when things go wrong


def test_a_provider_that_cannot_be_reached_is_said_on_the_sign_in_page(oidc, client):
    oidc.OIDC_ISSUER = f"http://127.0.0.1:{port()}"  # nothing listens there
    oidc.OIDC_PROVIDER_NAME = "Company SSO"

    response = client.get("/login/sso/", {"next": "https://elsewhere.example/steal"}, follow=True)

    assert response.redirect_chain[-1][0] == "/login/"
    assert "Company SSO cannot be reached right now" in response.content.decode()
    assert client.session["oidc_next"] == "/"  # never another site


def test_a_refusal_or_a_stray_answer_from_the_provider_is_explained(oidc, client):
    oidc.OIDC_PROVIDER_NAME = "Company SSO"
    refused = client.get(
        "/login/sso/callback", {"error": "access_denied", "error_description": "Not today"}, follow=True
    )
    assert "Company SSO did not sign you in (access_denied: Not today)." in refused.content.decode()

    stray = client.get("/login/sso/callback", {"code": "abc", "state": "never-issued"}, follow=True)
    assert stray.redirect_chain[-1][0] == "/login/"
    assert "Sign-in with Company SSO did not complete (mismatching_state). Start again." in stray.content.decode()
    assert "_auth_user_id" not in client.session


def test_single_sign_on_pages_are_404_when_it_is_not_configured(settings, client, db):
    settings.OIDC_ENABLED = False
    assert client.get("/login/sso/").status_code == 404
    assert client.get("/login/sso/callback").status_code == 404
    assert "Sign in with" not in client.get("/login/").content.decode()


def test_admins_see_linked_identities_and_who_keeps_each_membership(oidc, admin, client, member):
    frank = oidc_sign_in(claims=claims(groups=["data-science"]))
    client.force_login(admin)

    identities = client.get("/admin/accounts/externalidentity/")
    assert identities.status_code == 200
    assert frank.username in identities.content.decode()
    memberships = client.get("/admin/accounts/membership/", {"managed_by__exact": "oidc"})
    assert memberships.status_code == 200
    assert "Single sign-on (OpenID Connect)" in memberships.content.decode()
    team_page = client.get("/teams/ds/")
    assert "from Single sign-on (OpenID Connect)" in team_page.content.decode()
    # Sign-in settings are for superusers only.
    client.force_login(member)
    assert client.get("/admin/accounts/signinsettings/").status_code in (302, 403)
