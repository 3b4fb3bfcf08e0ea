"""Every page works under the Content-Security-Policy, in a real Chromium: no script runs
inline, and nothing the pages need is blocked (the API docs, the admin, the register form)."""

import pytest
from django.test import Client
from playwright.sync_api import expect

from registry import services as registry
from tests.factories import make_version

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def violations(page):
    """Console errors and page errors the policy caused (Chromium reports each blocked resource)."""
    seen: list[str] = []
    page.on("console", lambda message: message.type == "error" and seen.append(message.text))
    page.on("pageerror", lambda error: seen.append(str(error)))
    return seen


def test_the_policy_forbids_inline_scripts(db):
    policy = Client().get("/login/")["Content-Security-Policy"]
    directives = {d.split()[0]: d.split()[1:] for d in policy.split("; ")}
    assert directives["script-src"] == ["'self'"] and directives["object-src"] == ["'none'"]
    assert directives["frame-ancestors"] == ["'none'"] and directives["form-action"] == ["'self'"]


def test_pages_run_under_the_policy(page, sign_in, violations, admin, team, owner, iris_file):
    registry.registered_model_create(actor=owner, name="iris", team=team)
    from registry.models import RegisteredModel

    make_version(RegisteredModel.objects.get(name="iris"), iris_file, actor=owner)
    sign_in(page, admin.username)
    for path in ("/", "/models/", "/models/iris/", "/models/iris/versions/1.0.0/", "/teams/", "/tokens/", "/services/"):
        response = page.goto(path)
        assert response.status == 200, path
    page.goto("/models/iris/versions/new")
    expect(page.get_by_role("button", name="Upload and register")).to_be_visible()

    page.goto("/api/docs")  # Swagger UI: its set-up script is a file, not inline
    expect(page.locator(".swagger-ui .information-container")).to_be_visible()
    page.goto("/admin/")
    expect(page.get_by_role("link", name="Environments")).to_be_visible()
    assert not [v for v in violations if "Content Security Policy" in v or "Refused to" in v], violations
