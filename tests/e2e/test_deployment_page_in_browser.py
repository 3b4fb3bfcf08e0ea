"""The deployment page in a real browser: the events its script appends write their times
as the page rendered the others (not in the browser's locale format), and an approval from
the queue says which deployment it was, with a link to it."""

import re

import pytest
from playwright.sync_api import expect

from deployments import services, states
from deployments.models import Deployment, Environment
from registry import services as registry
from tests.factories import make_version

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

HH_MM_SS = re.compile(r"^\d\d:\d\d:\d\d$")


def test_appended_event_times_match_the_rendered_ones_and_the_approval_links(
    browser, sign_in, live_server, member, approver, team, owner, iris_file
):
    Environment.ensure_defaults()
    model = registry.registered_model_create(actor=owner, name="iris", team=team)
    make_version(model, iris_file, actor=owner)
    service = services.service_create(actor=owner, name="iris-api", team=team, model=model)
    deployment = services.deployment_request(
        actor=member,
        service=service,
        version=model.versions.get(),
        environment=Environment.objects.get(name="production"),
    )

    # A locale whose own time format is 8:23:47 PM: the page must not use it.
    scientist = browser.new_context(base_url=live_server.url, locale="en-US").new_page()
    sign_in(scientist, member.username)
    scientist.goto(f"/deployments/{deployment.pk}")
    rendered = scientist.locator("#events time").first.text_content()
    assert HH_MM_SS.match(rendered), rendered
    states.event(Deployment.objects.get(pk=deployment.pk), "Something to append.")
    appended = scientist.locator("#events li").filter(has_text="Something to append.")
    expect(appended).to_be_visible()
    assert HH_MM_SS.match(appended.locator("time").text_content()), appended.inner_html()

    it = browser.new_context(base_url=live_server.url).new_page()
    sign_in(it, approver.username)
    it.get_by_role("navigation", name="Main").get_by_role("link", name="Approvals").click()
    it.locator("section.card").filter(has_text="iris-api 1.0.0 → production").get_by_role(
        "button", name="Approve"
    ).click()
    message = it.get_by_role("status").filter(has_text="approved; a worker is rolling it out")
    expect(message).to_contain_text(f"Deployment #{deployment.pk} (iris-api 1.0.0 to production)")
    message.get_by_role("link", name=f"#{deployment.pk}").click()
    expect(it.get_by_role("heading", name=f"Deployment #{deployment.pk}: 1.0.0 → production")).to_be_visible()
