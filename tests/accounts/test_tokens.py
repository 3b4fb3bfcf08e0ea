from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import services
from accounts.models import ApiToken, AuditEvent
from accounts.tokens import TOKEN_PREFIX
from tests.factories import bearer_client

pytestmark = pytest.mark.django_db


def client_with(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def test_create_returns_the_secret_once_and_stores_only_a_digest(api, member):
    response = api(member).post("/api/v1/tokens", {"name": "laptop", "expires_in_days": 30}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    raw = body["token"]
    assert raw.startswith(TOKEN_PREFIX) and body["prefix"] == raw[:12]
    assert response["Cache-Control"] == "no-store"

    stored = ApiToken.objects.get(pk=body["id"])
    for column in ("name", "prefix", "digest"):
        assert raw not in str(getattr(stored, column))
    # No stored value is anywhere in the database as the token itself.
    assert not ApiToken.objects.filter(digest=raw).exists()

    listed = api(member).get("/api/v1/tokens").json()["results"]
    assert any(t["id"] == body["id"] for t in listed)
    assert all("token" not in t and "digest" not in t for t in listed)
    assert raw not in str(listed)


def test_token_has_at_least_128_bits_of_randomness(member):
    _, raw = services.token_create(actor=member, user=member, name="a")
    secret_part = raw[len(TOKEN_PREFIX) :].replace("_", "")
    # 62-letter alphabet: log2(62) ≈ 5.95 bits per character.
    assert len(secret_part) * 5.95 >= 128


def test_bearer_token_authenticates_and_updates_last_used(member):
    token, raw = services.token_create(actor=member, user=member, name="cli")
    assert token.last_used_at is None
    response = client_with(raw).get("/api/v1/users/me")
    assert response.status_code == 200
    assert response.json()["username"] == member.username
    token.refresh_from_db()
    assert token.last_used_at is not None and timezone.now() - token.last_used_at < timedelta(minutes=1)


def test_last_used_is_written_again_once_it_is_stale(member):
    token, raw = services.token_create(actor=member, user=member, name="cli")
    old = timezone.now() - timedelta(hours=2)
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=old)
    client_with(raw).get("/api/v1/users/me")
    token.refresh_from_db()
    assert token.last_used_at > old + timedelta(hours=1)


@pytest.mark.parametrize("column", ["prefix", "digest", "name"])
def test_no_stored_column_works_as_a_token(member, column):
    token, _ = services.token_create(actor=member, user=member, name="stored")
    response = client_with(getattr(token, column)).get("/api/v1/users/me")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_revoked_token_answers_401(api, member):
    client = api(member)
    token = ApiToken.objects.get(user=member)
    assert client.delete(f"/api/v1/tokens/{token.pk}").status_code == 204
    response = client.get("/api/v1/users/me")
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]
    assert 'error="invalid_token"' in response["WWW-Authenticate"]


def test_expired_token_answers_401(member):
    token, raw = services.token_create(actor=member, user=member, name="old")
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = client_with(raw).get("/api/v1/users/me")
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]


def test_token_of_a_deactivated_user_answers_401(admin, member):
    _, raw = services.token_create(actor=member, user=member, name="x")
    services.user_update(actor=admin, user=member, is_active=False)
    assert client_with(raw).get("/api/v1/users/me").status_code == 401


@pytest.mark.parametrize(
    "header",
    [None, "Bearer", "Bearer a b", "Bearer not-a-token", "Bearer ptl_aaaaaaaa_" + "b" * 40, "Token abc"],
)
def test_missing_or_bad_credentials_answer_401_with_www_authenticate(db, header):
    client = APIClient()
    if header:
        client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get("/api/v1/users/me")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith('Bearer realm="portal"')
    assert response.json()["detail"]


def test_read_only_token_cannot_write(member):
    client = bearer_client(member, scopes=["read"])
    assert client.get("/api/v1/tokens").status_code == 200
    response = client.post("/api/v1/tokens", {"name": "more"}, format="json")
    assert response.status_code == 403
    assert "'write' scope" in response.json()["detail"]


def test_someone_elses_token_is_not_found(api, member, outsider):
    token, _ = services.token_create(actor=member, user=member, name="mine")
    response = api(outsider).delete(f"/api/v1/tokens/{token.pk}")
    assert response.status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None


def test_revoking_twice_is_harmless_and_audited_once(api, member):
    token, _ = services.token_create(actor=member, user=member, name="twice")
    client = api(member)
    assert client.delete(f"/api/v1/tokens/{token.pk}").status_code == 204
    assert client.delete(f"/api/v1/tokens/{token.pk}/").status_code == 204
    assert AuditEvent.objects.filter(action="token.revoke", target_id=str(token.pk)).count() == 1


def test_service_accounts_cannot_mint_their_own_tokens(api, service_account):
    response = api(service_account).post("/api/v1/tokens", {"name": "more"}, format="json")
    assert response.status_code == 403
    assert "admin" in response.json()["detail"]


def test_admin_can_create_a_token_for_a_service_account(api, admin, service_account):
    response = api(admin).post("/api/v1/tokens", {"name": "consumer", "user": service_account.username}, format="json")
    assert response.status_code == 201
    assert response.json()["user"] == service_account.username
    assert client_with(response.json()["token"]).get("/api/v1/users/me").json()["username"] == service_account.username


def test_others_cannot_create_tokens_for_someone_else(api, member, outsider):
    response = api(member).post("/api/v1/tokens", {"name": "x", "user": outsider.username}, format="json")
    assert response.status_code == 403


def test_a_token_cannot_make_a_stronger_token(member):
    """A token made with a token gets at most its scopes and expires no later (a leaked
    read-only or short-lived token must not become a full, long-lived one)."""
    via, raw = services.token_create(actor=member, user=member, name="ci", scopes=["read", "write"], expires_in_days=3)
    client = client_with(raw)
    refused = client.post("/api/v1/tokens", {"name": "more", "scopes": ["read", "invoke"]}, format="json")
    assert refused.status_code == 403 and "cannot make a token with invoke" in refused.json()["detail"]
    too_long = client.post("/api/v1/tokens", {"name": "longer", "expires_in_days": 30}, format="json")
    assert too_long.status_code == 400 and "cannot outlive it" in too_long.json()["detail"]
    assert "expires_in_days" in too_long.json()["errors"]

    made = client.post("/api/v1/tokens", {"name": "child"}, format="json")
    assert made.status_code == 201, made.content
    child = ApiToken.objects.get(pk=made.json()["id"])
    assert child.scopes == ["read", "write"] and child.expires_at == via.expires_at
    narrower = client.post(
        "/api/v1/tokens", {"name": "reader", "scopes": ["read"], "expires_in_days": 1}, format="json"
    )
    assert narrower.status_code == 201 and narrower.json()["scopes"] == ["read"]
    assert not ApiToken.objects.filter(name__in=["more", "longer"]).exists()


def test_a_signed_in_person_still_makes_any_token(client, member):
    client.force_login(member)
    made = client.post("/api/v1/tokens", {"name": "full", "expires_in_days": 365}, content_type="application/json")
    assert made.status_code == 201 and set(made.json()["scopes"]) == {"read", "write", "invoke"}


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": "t", "expires_in_days": 0}, "expires_in_days"),
        ({"name": "t", "expires_in_days": 100000}, "expires_in_days"),
        ({"name": "t", "expires_in_days": "soon"}, "expires_in_days"),
        ({"name": "t", "scopes": ["admin"]}, "scopes"),
        ({"name": "t", "scopes": []}, "scopes"),
    ],
)
def test_bad_token_requests_answer_400_naming_the_field(api, member, payload, field):
    response = api(member).post("/api/v1/tokens", payload, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()["errors"]


def test_duplicate_active_name_is_a_conflict(api, member):
    client = api(member)
    assert client.post("/api/v1/tokens", {"name": "ci"}, format="json").status_code == 201
    response = client.post("/api/v1/tokens", {"name": "ci"}, format="json")
    assert response.status_code == 409
    assert "already has an active token named 'ci'" in response.json()["detail"]


def test_create_token_command_prints_the_token_and_nothing_else(service_account, capsys):
    call_command("create_token", service_account.username, "--name", "consumer", "--expires-in-days", "10")
    out = capsys.readouterr().out
    raw = out.strip()
    assert out == raw + "\n" and raw.startswith(TOKEN_PREFIX)
    assert client_with(raw).get("/api/v1/users/me").status_code == 200
    event = AuditEvent.objects.get(action="token.create")
    assert event.source == "cli" and event.actor_username == "(command line)"


def test_create_token_command_twice_without_a_name_works(service_account, capsys):
    call_command("create_token", service_account.username)
    call_command("create_token", service_account.username)
    tokens = capsys.readouterr().out.split()
    assert len(set(tokens)) == 2


def test_create_token_command_refuses_an_unknown_user(db):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="No user named 'ghost'"):
        call_command("create_token", "ghost")
