"""Refused registrations do not pile up uploads: a finished upload whose registration was
refused is kept for UPLOAD_REFUSED_HOURS from the refusal, sooner than an untouched one
(UPLOAD_IDLE_HOURS), and the list says until when each is kept."""

from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from registry import services
from registry.models import ModelVersion, Upload
from tests.registry.test_resumable_uploads import no_leftover_uploads, register_upload, send_all, start  # noqa: F401

pytestmark = pytest.mark.django_db


def kept_until(client, upload_id: str) -> datetime:
    listed = {u["id"]: u for u in client.get("/api/v1/uploads").json()["results"]}
    return datetime.fromisoformat(listed[upload_id]["expires_at"])


def hours_from_now(moment: datetime) -> float:
    return (moment - timezone.now()).total_seconds() / 3600


def test_a_refused_registration_keeps_its_upload_hours_not_a_day(api, member, iris_model, iris_file):
    client = api(member)
    content = iris_file.read_bytes()
    finished = start(client, content).json()
    assert send_all(client, finished, content).status_code == 200
    abandoned = start(client, content[:-1]).json()  # receiving, never finished
    assert 23 < hours_from_now(kept_until(client, finished["id"])) <= 24

    refused = register_upload(client, finished["id"], version="one")
    assert refused.status_code == 400
    assert 1.9 < hours_from_now(kept_until(client, finished["id"])) <= 2
    assert 23 < hours_from_now(kept_until(client, abandoned["id"])) <= 24  # untouched: as long as before
    # A retry refused later keeps it two hours from then (never beyond a day after its last part).
    Upload.objects.filter(pk=finished["id"]).update(expires_at=timezone.now() + timedelta(minutes=30))
    assert register_upload(client, finished["id"], version="0.1").status_code == 400
    assert 1.9 < hours_from_now(kept_until(client, finished["id"])) <= 2

    # Meanwhile the same bytes are still there for the retry that works.
    assert register_upload(client, finished["id"], version="1.0.0").status_code == 201
    assert ModelVersion.objects.get().version == "1.0.0"


def test_refused_uploads_are_swept_before_untouched_ones(api, member, iris_model, iris_file, settings):
    settings.UPLOAD_REFUSED_HOURS = 0
    client = api(member)
    content = iris_file.read_bytes()
    refused = start(client, content).json()
    send_all(client, refused, content)
    kept = start(client, content).json()
    send_all(client, kept, content)
    assert register_upload(client, refused["id"], version="one").status_code == 400
    services.upload_cleanup()
    assert [u["id"] for u in client.get("/api/v1/uploads").json()["results"]] == [kept["id"]]
