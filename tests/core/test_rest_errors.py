"""Bodies of the wrong media type: 415 with what to send instead."""

import pytest

pytestmark = pytest.mark.django_db


def test_form_encoded_body_on_a_json_endpoint(api, owner):
    response = api(owner).post("/api/v1/teams", "name=vision", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415, response.content
    detail = response.json()["detail"]
    assert "application/x-www-form-urlencoded" in detail  # what was sent
    assert detail.endswith("Send JSON: Content-Type: application/json.")


def test_multipart_body_on_a_json_endpoint(api, owner):
    response = api(owner).post("/api/v1/teams", {"name": "vision"})  # the test client's default: multipart
    assert response.status_code == 415
    assert "Send JSON: Content-Type: application/json." in response.json()["detail"]


def test_an_endpoint_that_also_takes_multipart_says_so(api, owner, team):
    from registry import services

    services.registered_model_create(actor=owner, name="iris", team=team)
    response = api(owner).post("/api/v1/models/iris/versions", "version=1.0.0", content_type="text/plain")
    assert response.status_code == 415
    assert response.json()["detail"].endswith("Send JSON (Content-Type: application/json), or multipart/form-data.")
