from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.factories import PASSWORD


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(base_url=live_server.url)
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


@pytest.fixture
def sign_in():
    """`sign_in(page, username)` signs in through the login page, as a person does."""

    def sign_in(page, username: str) -> None:
        page.goto("/login/")
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name=f"Hello, {username}")).to_be_visible()

    return sign_in
