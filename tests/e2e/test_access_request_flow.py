"""A consumer finds a service in the catalog and asks for access in a real browser; a maintainer
of the owning team approves it in the access-request queue; the consumer's token then gets
answers from a real gateway, where it got 403 before."""

import pytest
from playwright.sync_api import expect

from portal.demo_models import iris_instances
from tests.factories import bearer_client, deploy_now
from tests.support import call, eventually

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_request_approve_and_call(
    browser, sign_in, live_server, iris_service, environments, member, maintainer, outsider, gateway
):
    deploy_now(iris_service, member, environments["development"], iris_service.model.versions.get())
    token = bearer_client(outsider, scopes=["invoke"]).raw_token
    url = f"{gateway.url}/serve/development/iris-api/v1/predict"
    body = {"instances": iris_instances(count=1)}
    # The token reaches the gateway first (401 until then); without a grant it is refused.
    code, answer, _ = eventually(lambda: (r := call(url, token=token, body=body))[0] != 401 and r)
    assert code == 403, answer

    consumer = browser.new_context(base_url=live_server.url).new_page()
    sign_in(consumer, outsider.username)
    consumer.get_by_role("navigation", name="Main").get_by_role("link", name="Services").click()
    consumer.get_by_role("searchbox", name="Search").fill("iris")
    consumer.get_by_role("button", name="Search").click()
    row = consumer.get_by_role("row").filter(has_text="iris-api")
    expect(row).to_contain_text("development /v1")
    row.get_by_role("link", name="iris-api").click()
    expect(consumer.get_by_text("curl -H").first).to_be_visible()
    consumer.get_by_label("Reason").fill("The shop shows iris species")
    consumer.get_by_role("button", name="Request access").click()
    expect(consumer.get_by_text("Asked for access to iris-api")).to_be_visible()
    expect(consumer.get_by_role("button", name="Withdraw the request")).to_be_visible()

    team = browser.new_context(base_url=live_server.url).new_page()
    sign_in(team, maintainer.username)
    nav_link = team.get_by_role("navigation", name="Main").get_by_role("link", name="Access requests")
    expect(nav_link).to_contain_text("1")
    nav_link.click()
    card = team.locator("section.card").filter(has_text="oscar-outsider → iris-api")
    expect(card).to_contain_text("The shop shows iris species")
    card.get_by_label("Comment").fill("Welcome")
    card.get_by_role("button", name="Approve").click()
    expect(team.get_by_text("Nothing waits for your decision.")).to_be_visible()

    # The grant is published: the same token now gets predictions.
    code, answer, _ = eventually(lambda: (r := call(url, token=token, body=body))[0] == 200 and r, timeout=10)
    assert code == 200 and len(answer["predictions"]) == 1, answer

    consumer.get_by_role("navigation", name="Main").get_by_role("link", name="Access requests").click()
    expect(consumer.get_by_role("row").filter(has_text="iris-api")).to_contain_text("Approved")
    expect(consumer.get_by_role("row").filter(has_text="iris-api")).to_contain_text("mark-maintainer")
