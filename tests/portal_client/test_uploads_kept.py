"""`portal uploads list` says until when each upload is kept."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from django.utils import timezone

from accounts.services import token_create

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cli]


def test_uploads_list_says_until_when_each_upload_is_kept(cli, member, team, tmp_path):
    from registry import services

    services.registered_model_create(actor=member, name="iris", team=team)  # uploads are for a model
    token = token_create(actor=None, user=member, name="client")[1]
    path = tmp_path / "model.bin"
    path.write_bytes(b"not a model, but bytes to keep" * 100)
    pushed = cli("uploads", "push", str(path), "--json", PORTAL_TOKEN=token)
    assert pushed.returncode == 0, pushed.stderr
    upload = json.loads(pushed.stdout)

    listed = cli("uploads", "list", "--json", PORTAL_TOKEN=token)
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    kept = datetime.fromisoformat(row["expires_at"])
    assert row["id"] == upload["id"] and 23 * 3600 < (kept - timezone.now()).total_seconds() <= 24 * 3600

    table = cli("uploads", "list", PORTAL_TOKEN=token, COLUMNS="200")
    assert table.returncode == 0, table.stderr
    header, line = table.stdout.splitlines()[:2]
    assert "KEPT UNTIL" in header
    assert row["expires_at"][:16].replace("T", " ") in line
