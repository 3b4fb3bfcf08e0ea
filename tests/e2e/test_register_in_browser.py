"""A data scientist registers a version through the web form and finds it on the model page."""

import json
import re

import pytest
from playwright.sync_api import expect

from portal.demo_models import iris_instances
from portal.models import ModelVersion
from tests.e2e.test_tokens_in_browser import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_register_a_version_through_the_form(page, member, team, iris_file, tmp_path):
    from portal import services

    services.registered_model_create(actor=member, name="iris", team=team, description="Flowers")
    sign_in(page, member.username)
    page.get_by_role("link", name="Models").click()
    page.get_by_role("link", name="iris").click()
    expect(page.get_by_text("No versions yet.")).to_be_visible()
    page.get_by_role("link", name="Register a version").first.click()

    page.get_by_label("Artifact").set_input_files(str(iris_file))
    page.get_by_label("Version").fill("1.0.0")
    page.get_by_label("Flavor").select_option("sklearn")
    page.get_by_label("Sample input").fill(json.dumps({"instances": iris_instances()}))
    page.get_by_label("Metrics").fill('{"accuracy": 0.93}')
    page.get_by_role("button", name="Upload and register").click()

    expect(page.get_by_role("heading", name="iris 1.0.0")).to_be_visible(timeout=60_000)
    expect(page.get_by_text("This is the first version")).to_be_visible()
    page.get_by_role("link", name="iris", exact=True).click()
    expect(page.get_by_role("row", name=re.compile(r"^1\.0\.0 sklearn"))).to_be_visible()
    expect(page.get_by_role("table").filter(has_text="accuracy")).to_contain_text("0.93")
    assert ModelVersion.objects.get().created_by == member


def test_the_form_shows_why_a_version_is_refused(page, member, team, iris_file):
    from portal import services

    services.registered_model_create(actor=member, name="iris", team=team)
    sign_in(page, member.username)
    page.goto("/models/iris/versions/new")
    page.get_by_label("Artifact").set_input_files(str(iris_file))
    page.get_by_label("Version").fill("1.0.0")
    page.get_by_label("Sample input").fill('{"instances": [{"a": 1}]}')
    page.get_by_role("button", name="Upload and register").click()
    expect(page.get_by_role("alert").first).to_contain_text("fails on its sample input", timeout=60_000)
    assert not ModelVersion.objects.exists()
