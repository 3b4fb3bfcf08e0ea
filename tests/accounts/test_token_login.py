"""Signing in for a token with a password (what `portal login` does), and its throttles."""

import pytest

from accounts.models import ApiToken, AuditEvent
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db

URL = "/api/v1/auth/token"


def login(client, username, password, **extra):
    return client.post(URL, {"username": username, "password": password, "name": "laptop"}, format="json", **extra)


def test_a_password_buys_a_token_shown_once(member):
    from rest_framework.test import APIClient

    response = login(APIClient(), member.username, PASSWORD)
    assert response.status_code == 201 and response["Cache-Control"] == "no-store"
    body = response.json()
    assert body["token"].startswith("ptl_") and body["scopes"] == ["read", "write", "invoke"]
    assert ApiToken.objects.get(user=member).name == "laptop"
    me = APIClient().get("/api/v1/users/me", HTTP_AUTHORIZATION=f"Bearer {body['token']}")
    assert me.json()["username"] == member.username


def test_wrong_passwords_and_service_accounts_get_nothing(member, service_account):
    from rest_framework.test import APIClient

    wrong = login(APIClient(), member.username, "nope")
    assert wrong.status_code == 400 and "Wrong username or password" in wrong.json()["detail"]
    assert login(APIClient(), service_account.username, "").status_code == 400
    assert not ApiToken.objects.exists()
    assert AuditEvent.objects.filter(action="auth.login_failed", actor_username=member.username).exists()


def test_guessing_is_throttled_per_address_whatever_x_forwarded_for_says(member):
    from rest_framework.test import APIClient

    client = APIClient()
    answers = [
        login(client, member.username, f"guess-{i}", HTTP_X_FORWARDED_FOR=f"10.0.0.{i}").status_code for i in range(11)
    ]
    assert answers == [400] * 10 + [429]
    assert login(client, member.username, PASSWORD).status_code == 429  # even the right password waits


def test_guessing_one_account_from_many_addresses_is_throttled(member):
    from rest_framework.test import APIClient

    answers = [
        login(APIClient(), member.username, f"guess-{i}", REMOTE_ADDR=f"10.0.{i // 250}.{i % 250}").status_code
        for i in range(31)
    ]
    assert answers[:30] == [400] * 30 and answers[30] == 429
    other = login(APIClient(), "someone-else", "x", REMOTE_ADDR="10.9.9.9")
    assert other.status_code == 400  # other accounts are not locked out


def sign_in_page(client, path: str, username: str, password: str, **extra):
    return client.post(path, {"username": username, "password": password}, **extra)


@pytest.mark.parametrize("path", ["/login/", "/admin/login/"])
def test_the_sign_in_pages_are_throttled_too(admin, path):
    """The page and the admin's count with the token sign-in: 10 attempts a minute from one
    address, whichever way they come; then 429 with a message, even for the right password."""
    from django.test import Client

    client = Client()
    answers = [sign_in_page(client, path, admin.username, f"guess-{i}").status_code for i in range(10)]
    assert 429 not in answers and set(answers) <= {200}
    refused = sign_in_page(client, path, admin.username, PASSWORD)
    assert refused.status_code == 429 and int(refused["Retry-After"]) >= 1
    assert "Too many sign-in attempts from your address" in refused.content.decode()
    assert "_auth_user_id" not in client.session
    throttled = AuditEvent.objects.filter(action="auth.login_throttled", actor_username=admin.username)
    assert throttled.get().data["limit"] == "login"


def test_one_budget_for_every_way_in(member):
    """Guesses on the page count against the API's budget for the same address, and back."""
    from django.test import Client
    from rest_framework.test import APIClient

    page, api = Client(), APIClient()
    for i in range(5):
        assert sign_in_page(page, "/login/", member.username, f"guess-{i}").status_code == 200
    for i in range(5):
        assert login(api, member.username, f"guess-api-{i}").status_code == 400
    assert login(api, member.username, PASSWORD).status_code == 429
    assert sign_in_page(page, "/login/", member.username, PASSWORD).status_code == 429
