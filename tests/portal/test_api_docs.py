import re

import pytest
from django.test import Client

from tests.support import ROOT

pytestmark = pytest.mark.django_db


def test_schema_lists_the_accounts_api(member, api):
    response = api(member).get("/api/schema", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in [
        "/api/v1/users/me",
        "/api/v1/users",
        "/api/v1/teams",
        "/api/v1/teams/{team}/members",
        "/api/v1/tokens",
        "/api/v1/tokens/{token_id}",
    ]:
        assert path in paths, path
    assert "bearer" in str(response.json()["components"]["securitySchemes"]).lower()


def test_docs_page_loads_every_asset_locally(member):
    client = Client()
    client.force_login(member)
    html = client.get("/api/docs").content.decode()
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert urls, html
    assert not [u for u in urls if u.startswith(("http://", "https://", "//"))]
    for url in urls:
        if url.startswith("/static/"):
            assert client.get(url).status_code == 200, url


def test_paths_work_with_and_without_trailing_slash(member, api):
    client = api(member)
    assert client.get("/api/v1/users/me").status_code == 200
    assert client.get("/api/v1/users/me/").status_code == 200
    assert client.post("/api/v1/teams/", {"name": "slashy"}, format="json").status_code == 201


def test_health_reports_database_and_redis(db):
    body = Client().get("/health").json()
    assert body == {"status": "ok", "database": "ok", "redis": "ok"}


def test_health_reports_a_redis_outage(db, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = Client().get("/health")
    assert response.status_code == 503
    assert response.json()["redis"].startswith("error")


def test_schema_generates_without_warnings_and_validates(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "manage.py", "spectacular", "--fail-on-warn", "--validate", "--file", tmp_path / "s.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
