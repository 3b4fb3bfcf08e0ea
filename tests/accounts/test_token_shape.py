"""A token cut short or run into other text is told so, with the length of a whole one."""

import pytest
from rest_framework.test import APIClient

from accounts import services
from accounts.tokens import TOKEN_BODY_LENGTH, TOKEN_PREFIX

pytestmark = pytest.mark.django_db


def refusal(raw: str) -> str:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    response = client.get("/api/v1/users/me")
    assert response.status_code == 401, response.content
    assert 'error="invalid_token"' in response["WWW-Authenticate"]
    return response.json()["detail"]


def test_a_token_cut_short(member):
    _, raw = services.token_create(actor=None, user=member, name="cli")
    detail = refusal(raw[:-5])
    assert detail == (
        f"This is not a whole Portal token: it should be ptl_ followed by {TOKEN_BODY_LENGTH} characters "
        f"(this one has {TOKEN_BODY_LENGTH - 5}); copy it again or create a new one."
    )
    assert TOKEN_BODY_LENGTH == len(raw) - len(TOKEN_PREFIX) == 49


def test_a_token_run_into_other_text(member):
    _, raw = services.token_create(actor=None, user=member, name="cli")
    assert "not a whole Portal token" in refusal(raw + "xyz")


def test_something_else_entirely():
    assert refusal("ghp_abcdef") == "This is not a Portal API token. Tokens start with 'ptl_'."
