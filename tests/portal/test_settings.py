"""Production settings refuse unsafe configurations and pass Django's deployment checks."""

import os
import subprocess
import sys

import pytest

from tests.support import ROOT

SECRET = "k" * 10 + "-production-secret-for-tests-0123456789-abcdefghijklmnop"


def manage(*args: str, tmp_path, **env: str) -> subprocess.CompletedProcess:
    full_env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DEBUG", "SECRET_KEY", "ALLOWED_HOSTS", "DJANGO_ALLOW_ASYNC_UNSAFE"}
    }
    full_env.update(PORTAL_VAR_DIR=str(tmp_path), DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite3", **env)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=120
    )


def test_deploy_check_passes_under_production_settings(tmp_path):
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        tmp_path=tmp_path,
        PORTAL_ENV="production",
        SECRET_KEY=SECRET,
        ALLOWED_HOSTS="portal.example.com",
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_production_refuses_a_missing_secret_key(tmp_path):
    result = manage("check", tmp_path=tmp_path, PORTAL_ENV="production", ALLOWED_HOSTS="portal.example.com")
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr
    assert not (tmp_path / "secret_key").exists()


def test_production_refuses_debug(tmp_path):
    result = manage(
        "check", tmp_path=tmp_path, PORTAL_ENV="production", SECRET_KEY=SECRET, ALLOWED_HOSTS="x", DEBUG="1"
    )
    assert result.returncode != 0
    assert "DEBUG must be off in production" in result.stderr


def test_production_refuses_missing_allowed_hosts(tmp_path):
    result = manage("check", tmp_path=tmp_path, PORTAL_ENV="production", SECRET_KEY=SECRET)
    assert result.returncode != 0 and "ALLOWED_HOSTS" in result.stderr


def test_debug_is_off_unless_asked_for(tmp_path):
    show = ["shell", "-c", "from django.conf import settings; print(settings.DEBUG)"]
    assert manage(*show, tmp_path=tmp_path).stdout.strip().splitlines()[-1] == "False"
    assert manage(*show, tmp_path=tmp_path, DEBUG="1").stdout.strip().splitlines()[-1] == "True"


def test_a_malformed_boolean_is_named(tmp_path):
    result = manage("check", tmp_path=tmp_path, DEBUG="maybe")
    assert result.returncode != 0 and "DEBUG='maybe' is not a boolean" in result.stderr


def test_a_retention_that_would_remove_notifications_as_they_are_made_is_refused(tmp_path):
    result = manage("check", tmp_path=tmp_path, NOTIFICATION_RETENTION_DAYS="0")
    assert result.returncode != 0 and "NOTIFICATION_RETENTION_DAYS=0 would remove notifications" in result.stderr


def test_seed_demo_refuses_production(tmp_path):
    result = manage("seed_demo", tmp_path=tmp_path, PORTAL_ENV="production", SECRET_KEY=SECRET, ALLOWED_HOSTS="x")
    assert result.returncode != 0 and "refuses to run in production" in result.stderr


def test_local_defaults_generate_a_private_secret_key_once(tmp_path):
    assert manage("check", tmp_path=tmp_path).returncode == 0
    key_file = tmp_path / "secret_key"
    first = key_file.read_text()
    assert oct(key_file.stat().st_mode & 0o777) == "0o600" and len(first) >= 50
    assert manage("check", tmp_path=tmp_path).returncode == 0
    assert key_file.read_text() == first


@pytest.mark.parametrize("name", ["PORTAL_ENV"])
def test_unknown_profile_is_refused(tmp_path, name):
    result = manage("check", tmp_path=tmp_path, **{name: "staging-ish"})
    assert result.returncode != 0 and "is unknown" in result.stderr


@pytest.mark.parametrize("mode", ["production", "local"])
def test_the_s3_artifact_store_needs_a_bucket(tmp_path, mode):
    result = manage(
        "check", tmp_path=tmp_path, PORTAL_ENV=mode, SECRET_KEY=SECRET, ALLOWED_HOSTS="x", ARTIFACT_STORE="s3"
    )
    assert result.returncode != 0 and "ARTIFACT_STORE=s3 needs ARTIFACT_S3_BUCKET" in result.stderr
    unknown = manage("check", tmp_path=tmp_path, ARTIFACT_STORE="minio")
    assert unknown.returncode != 0 and "ARTIFACT_STORE='minio' is unknown" in unknown.stderr
