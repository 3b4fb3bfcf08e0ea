"""The core loop in a real browser: a data scientist requests a production deployment, an IT
approver approves it, and the data scientist watches it go live without reloading."""

import pytest
from playwright.sync_api import expect

from deployments import services
from deployments.models import Environment
from registry import services as registry
from tests.factories import make_version
from tests.support import start_worker

pytestmark = [
    pytest.mark.browser,
    pytest.mark.worker,
    pytest.mark.django_db(transaction=True),
]


def test_request_approve_and_watch_it_go_live(
    browser, sign_in, live_server, member, approver, team, owner, iris_file, redis_url, tmp_path
):
    Environment.ensure_defaults()
    model = registry.registered_model_create(actor=owner, name="iris", team=team)
    make_version(model, iris_file, actor=owner)
    services.service_create(actor=owner, name="iris-api", team=team, model=model)
    worker = start_worker(redis_url, tmp_path / "worker.log")
    try:
        scientist = browser.new_context(base_url=live_server.url).new_page()
        sign_in(scientist, member.username)
        scientist.get_by_role("navigation", name="Main").get_by_role("link", name="Services").click()
        scientist.get_by_role("link", name="iris-api").click()
        expect(scientist.get_by_text("Not live anywhere yet.")).to_be_visible()
        scientist.get_by_label("Environment").select_option("production")
        scientist.get_by_label("Reason").fill("First release")
        scientist.get_by_role("button", name="Request deployment").click()
        expect(scientist.locator("#status")).to_have_text("Waiting for approval")
        deployment_url = scientist.url

        it = browser.new_context(base_url=live_server.url).new_page()
        sign_in(it, approver.username)
        it.get_by_role("navigation", name="Main").get_by_role("link", name="Approvals").click()
        card = it.locator("section.card").filter(has_text="iris-api 1.0.0 → production")
        card.get_by_label("Comment").fill("Model card reviewed")
        card.get_by_role("button", name="Approve").click()
        expect(it.get_by_text("Nothing waits for approval.")).to_be_visible()

        # The scientist's page follows on its own: approved, provisioning, live.
        expect(scientist.locator("#status")).to_have_text("Live", timeout=60_000)
        assert scientist.url == deployment_url
        expect(scientist.locator("#events")).to_contain_text("Approved by april-approver: Model card reviewed")
        expect(scientist.locator("#events")).to_contain_text("1.0.0 is live.")
        scientist.get_by_role("link", name="iris-api").click()
        expect(scientist.get_by_role("row").filter(has_text="/v1").first).to_contain_text("1.0.0")
        expect(scientist.get_by_text("curl -H")).to_be_visible()
    finally:
        worker.terminate()
        worker.wait(timeout=30)
