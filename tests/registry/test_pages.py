"""The registry's HTML pages."""

import json

import pytest
from django.test import Client

from registry.models import ModelVersion
from tests.factories import make_version, register, sample

pytestmark = pytest.mark.django_db


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_model_list_search_pagination_and_empty_states(owner, team, outsider):
    from registry import services

    assert "Register the first one" in signed_in(owner).get("/models/").content.decode()
    assert "once a team you belong to registers one" in signed_in(outsider).get("/models/").content.decode()
    for i in range(30):
        services.registered_model_create(actor=owner, name=f"model-{i:02d}", team=team)
    page = signed_in(owner).get("/models/").content.decode()
    assert "Page 1 of 2" in page
    found = signed_in(owner).get("/models/?q=model-07").content.decode()
    assert "model-07" in found and "model-08" not in found
    assert "No model matches" in signed_in(owner).get("/models/?q=zzz").content.decode()
    assert "model-01" not in signed_in(outsider).get("/models/").content.decode()


def test_create_a_model_from_the_page(member, team):
    response = signed_in(member).post("/models/new", {"name": "churn", "team": "vision", "description": "x"})
    assert response.status_code == 302 and response["Location"] == "/models/churn/versions/new"


def test_viewer_cannot_create_models_here(viewer, team):
    content = signed_in(viewer).get("/models/new").content.decode()
    assert "You need to be an owner, maintainer or member" in content
    response = signed_in(viewer).post("/models/new", {"name": "churn", "team": "vision"})
    assert response.status_code == 400


def test_model_page_shows_versions_metrics_chart_lineage_and_owner(iris_model, owner, viewer, iris_file):
    v1 = make_version(iris_model, iris_file, actor=owner)
    v1.metrics, v1.git_commit, v1.parameters = {"accuracy": 0.91, "f1": 0.9}, "abc123", {"C": 1}
    v1.save()
    v2 = make_version(iris_model, iris_file, version="1.1.0", actor=owner)
    v2.metrics = {"accuracy": 0.95}
    v2.save()
    content = signed_in(viewer).get("/models/iris/").content.decode()
    assert "<strong>species</strong>" in content  # Markdown description
    assert "<svg" in content and "Evaluation metrics of iris by version" in content
    assert "0.91" in content and "0.95" in content and "abc123" in content
    assert "olivia-owner" in content
    assert "Register a version" not in content  # viewers cannot


def test_markdown_is_rendered_safely(iris_model, owner, viewer):
    iris_model.description = "Hello <script>alert(1)</script> [x](javascript:alert(1)) <img src=x onerror=alert(1)>"
    iris_model.save()
    content = signed_in(viewer).get("/models/iris/").content.decode()
    assert "<script>alert(1)" not in content and "javascript:" not in content and "onerror" not in content


def test_version_page_explains_the_changes(iris_model, owner, viewer, api, iris_file, tmp_path):
    from portal.demo_models import IRIS_FIELDS

    client = api(owner)
    assert register(client, "iris", iris_file, description="**bold** card").status_code == 201
    renamed = ["sepal_length_cm", *IRIS_FIELDS[1:]]
    assert register(client, "iris", iris_file, version="2.0.0", sample_input=sample(renamed)).status_code == 201
    content = signed_in(viewer).get("/models/iris/versions/2.0.0/").content.decode()
    assert "2 breaking changes" in content
    assert "which is why this is a new major version" in content
    assert "It may have been renamed to <code>sepal_length_cm</code>" in content
    assert "/api/v1/models/iris/versions/2.0.0/artifact" in content
    first = signed_in(viewer).get("/models/iris/versions/1.0.0/").content.decode()
    assert "This is the first version" in first and "<strong>bold</strong>" in first


def test_unknown_version_and_invisible_model_are_404(iris_model, viewer, outsider):
    assert signed_in(viewer).get("/models/iris/versions/9.9.9/").status_code == 404
    assert signed_in(outsider).get("/models/iris/").status_code == 404


def test_register_form_without_javascript(iris_model, member, iris_file):
    client = signed_in(member)
    page = client.get("/models/iris/versions/new")
    assert page.status_code == 200 and b"Upload and register" in page.content
    with open(iris_file, "rb") as handle:
        response = client.post(
            "/models/iris/versions/new",
            {"artifact": handle, "version": "1.0.0", "flavor": "sklearn", "sample_input": sample(), "metrics": ""},
        )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert response["Location"] == "/models/iris/versions/1.0.0/"
    assert ModelVersion.objects.get().created_by == member


def test_register_form_shows_the_reason_and_keeps_the_fields(iris_model, member, iris_file):
    with open(iris_file, "rb") as handle:
        response = signed_in(member).post(
            "/models/iris/versions/new",
            {"artifact": handle, "version": "1.0", "flavor": "sklearn", "sample_input": sample()},
        )
    assert response.status_code == 400
    content = response.content.decode()
    assert "is not a semantic version" in content and 'value="1.0"' in content
    assert not ModelVersion.objects.exists()


def test_register_form_enforces_csrf(iris_model, member, iris_file):
    client = Client(enforce_csrf_checks=True)
    client.force_login(member)
    with open(iris_file, "rb") as handle:
        response = client.post(
            "/models/iris/versions/new",
            {"artifact": handle, "version": "1.0.0", "flavor": "sklearn", "sample_input": sample()},
        )
    assert response.status_code == 403
    assert not ModelVersion.objects.exists()


def test_register_form_for_a_viewer_is_403(iris_model, viewer):
    assert signed_in(viewer).get("/models/iris/versions/new").status_code == 403


def test_form_prefills_the_next_version(iris_model, owner, iris_file):
    make_version(iris_model, iris_file, version="1.3.2", actor=owner)
    content = signed_in(owner).get("/models/iris/versions/new").content.decode()
    assert 'value="1.4.0"' in content and json.dumps("sepal_length") in content.replace("&quot;", '"')


def test_register_form_with_a_valid_csrf_token(iris_model, member, iris_file):
    client = Client(enforce_csrf_checks=True)
    client.force_login(member)
    client.get("/models/iris/versions/new")
    token = client.cookies["csrftoken"].value
    with open(iris_file, "rb") as handle:
        response = client.post(
            "/models/iris/versions/new",
            {
                "csrfmiddlewaretoken": token,
                "artifact": handle,
                "version": "1.0.0",
                "flavor": "sklearn",
                "sample_input": sample(),
            },
        )
    assert response.status_code == 302, response.content.decode()[:1000]
