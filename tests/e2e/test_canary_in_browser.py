"""A canary steered from its deployment page in a real browser: pause, resume, promote."""

import pytest
from playwright.sync_api import expect

from deployments import rollout, services
from deployments.models import Deployment, Environment, Status, Strategy
from registry import services as registry
from tests.factories import deploy_now, make_version

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_pause_resume_and_promote_a_canary_from_its_page(page, sign_in, member, team, owner, iris_file, tmp_path):
    Environment.ensure_defaults()
    development = Environment.objects.get(name="development")
    model = registry.registered_model_create(actor=owner, name="iris", team=team)
    service = services.service_create(actor=owner, name="iris-api", team=team, model=model)
    deploy_now(service, member, development, make_version(model, iris_file, actor=owner))
    path = tmp_path / "good.py"
    path.write_text("def predict(instances):\n    return [0 for _ in instances]\n")
    candidate = services.deployment_request(
        actor=member,
        service=service,
        version=make_version(model, path, version="1.1.0", flavor="pyfunc"),
        environment=development,
        rollout=services.Rollout(strategy=Strategy.CANARY, steps=(10, 50), bake_seconds=600),
    )
    rollout.rollout(candidate.pk, owner="test")
    assert Deployment.objects.get(pk=candidate.pk).status == Status.CANARY

    sign_in(page, member.username)
    page.goto(f"/deployments/{candidate.pk}/")
    expect(page.locator("#status")).to_have_text("Canary")
    expect(page.locator("#split-text")).to_contain_text("Stable 1.0.0: 90 % of requests · Candidate 1.1.0: 10 %")
    expect(page.get_by_role("table")).to_contain_text("Requests")
    expect(page.locator("#steps li[aria-current=step]")).to_contain_text("10 %")

    page.get_by_role("button", name="Pause").click()
    expect(page.get_by_text(f"Deployment #{candidate.pk} paused")).to_be_visible()
    expect(page.get_by_role("heading", name="Canary Paused")).to_be_visible()
    assert Deployment.objects.get(pk=candidate.pk).paused

    page.get_by_role("button", name="Resume").click()
    expect(page.get_by_text(f"Deployment #{candidate.pk} resumed")).to_be_visible()
    expect(page.get_by_role("button", name="Pause")).to_be_visible()

    # Promote asks first; declining changes nothing.
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name="Promote now").click()
    expect(page.locator("#status")).to_have_text("Canary")
    assert Deployment.objects.get(pk=candidate.pk).status == Status.CANARY
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Promote now").click()
    expect(page.get_by_text(f"Deployment #{candidate.pk} promoted")).to_be_visible()
    expect(page.locator("#status")).to_have_text("Live")
    expect(page.locator("#events")).to_contain_text(f"{member.username} promoted 1.1.0 at 10 %.")
    assert Deployment.objects.get(pk=candidate.pk).status == Status.LIVE
    rollout.rollout(candidate.pk, owner="test")  # what the queued task does: the old version drains
