"""The performance page: the prediction log's settings, ground truth upload, latest predictions."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from deployments.models import PredictionLogging

pytestmark = pytest.mark.django_db


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_page_shows_the_defaults_and_an_empty_state(iris_service, member, environments):
    page = signed_in(member).get("/services/iris-api/performance/?environment=production")
    html = page.content.decode()
    assert page.status_code == 200
    assert "100% of predictions logged with their inputs and predictions, kept 30 days" in html
    assert "(the portal's defaults)" in html and "No predictions logged in production yet." in html
    assert 'aria-current="page" class="active">production' in html
    assert "prediction_logging_change" not in html and 'name="sample_rate"' not in html  # members may not change it
    assert 'href="/services/iris-api/performance/"' in signed_in(member).get("/services/iris-api/").content.decode()


def test_an_owner_changes_the_log_from_the_page(iris_service, owner, environments):
    client = signed_in(owner)
    assert 'name="sample_rate"' in client.get("/services/iris-api/performance/").content.decode()
    form = {"environment": "staging", "enabled": "on", "sample_rate": "0.25", "retention_days": "7"}
    answer = client.post("/services/iris-api/performance/logging", form, follow=True)
    assert "The prediction log of iris-api in staging is updated." in answer.content.decode()
    policy = PredictionLogging.objects.get(service=iris_service, environment=environments["staging"])
    assert (policy.enabled, policy.sample_rate, policy.keep_payloads, policy.retention_days) == (True, 0.25, False, 7)
    bad = client.post("/services/iris-api/performance/logging", {**form, "sample_rate": "3"}, follow=True)
    assert "sample_rate" in bad.content.decode() and PredictionLogging.objects.get(pk=policy.pk).sample_rate == 0.25


def test_a_ground_truth_file_is_sent_from_the_page(iris_service, member, environments):
    unknown = "00000000001" + "ab" * 5
    upload = SimpleUploadedFile("outcomes.csv", f"prediction_id,actual\n{unknown},1\n".encode(), "text/csv")
    answer = signed_in(member).post(
        "/services/iris-api/performance/feedback", {"environment": "development", "file": upload}, follow=True
    )
    html = answer.content.decode()
    assert "0 outcome(s) kept; 1 id(s) are not predictions of iris-api: " + unknown in html
    wrong = SimpleUploadedFile("outcomes.csv", b"id,label\n1,2\n", "text/csv")
    answer = signed_in(member).post("/services/iris-api/performance/feedback", {"file": wrong}, follow=True)
    assert "needs a header row with prediction_id and actual" in answer.content.decode()


def test_someone_who_cannot_see_the_service_gets_no_page(iris_service, outsider, environments):
    assert signed_in(outsider).get("/services/iris-api/performance/").status_code == 404
    assert signed_in(outsider).post("/services/iris-api/performance/logging", {}).status_code == 404
