"""A person signs in, creates a token, sees it listed, and revokes it, in a real Chromium."""

import re

import pytest
from playwright.sync_api import expect

from accounts.models import ApiToken

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_sign_in_create_list_and_revoke_a_token(page, sign_in, member):
    sign_in(page, member.username)
    page.get_by_role("link", name="API tokens").click()
    expect(page.get_by_text("You have no tokens yet")).to_be_visible()

    page.get_by_label("Name").fill("browser test")
    page.get_by_label("Expires in").select_option("30")
    page.get_by_role("button", name="Create token").click()

    secret = page.get_by_test_id("new-token").input_value()
    assert re.fullmatch(r"ptl_[A-Za-z0-9]{8}_[A-Za-z0-9]{40}", secret)
    expect(page.get_by_text("it is shown only once")).to_be_visible()
    token = ApiToken.objects.get(user=member)
    row = page.locator(f"tr[data-token-prefix='{token.prefix}']")
    expect(row).to_contain_text("browser test")
    expect(row).to_contain_text("active")

    # Reloading the list never shows the secret again.
    page.goto("/tokens/")
    assert secret not in page.content()

    row.get_by_role("link", name="Revoke").click()
    expect(page.get_by_role("heading", name="Revoke token “browser test”?")).to_be_visible()
    page.get_by_role("button", name="Revoke token").click()
    expect(page.get_by_text("revoked. It stops working at once")).to_be_visible()
    expect(page.locator(f"tr[data-token-prefix='{token.prefix}']")).to_contain_text("revoked")
    token.refresh_from_db()
    assert token.revoked_at is not None


def test_layout_fits_a_phone(page, sign_in, team, member):
    from accounts import services

    services.token_create(actor=member, user=member, name="phone check")
    page.set_viewport_size({"width": 375, "height": 740})
    sign_in(page, member.username)
    for path in ["/", "/tokens/", "/teams/", "/teams/vision/"]:
        page.goto(path)
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, path
    page.goto("/tokens/")
    expect(page.get_by_role("button", name="Create token")).to_be_visible()
