"""`portal deploy --canary/--shadow` and `portal deployments pause|resume|promote|abort`
against a real portal (gunicorn), a real Celery worker and real model servers."""

import json
import time

import pytest

from deployments.models import Deployment, Status
from tests.factories import deploy_now, make_version
from tests.portal_client.test_cli_errors import one_line_error
from tests.support import wait_for_status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker, pytest.mark.cli]


@pytest.fixture
def portal(cli, celery_worker, member, iris_service, environments, tmp_path):
    """`portal(...)` as a member of the service's team, with iris-api 1.0.0 live and 1.1.0 registered."""
    from accounts.services import token_create

    deploy_now(iris_service, member, environments["development"], iris_service.model.versions.get())
    path = tmp_path / "good.py"
    path.write_text("def predict(instances):\n    return [0 for _ in instances]\n")
    make_version(iris_service.model, path, version="1.1.0", flavor="pyfunc")
    _, raw = token_create(actor=None, user=member, name="cli")
    return lambda *args, **env: cli(*args, **{"PORTAL_TOKEN": raw, **env})


def test_bad_canary_options_are_usage_errors(portal):
    one_line_error(portal("deploy", "iris-api", "1.1.0", "--env", "development", "--bake", "2m"), 2, "--canary")
    one_line_error(
        portal("deploy", "iris-api", "1.1.0", "--env", "development", "--canary", "5,25", "--bake", "soon"),
        2,
        "30s, 2m or 1h",
    )
    one_line_error(
        portal("deploy", "iris-api", "1.1.0", "--env", "development", "--canary", "5", "--shadow", "10"),
        2,
        "not both",
    )
    # The portal's own refusals: exit 1 with its message.
    one_line_error(portal("deploy", "iris-api", "1.1.0", "--env", "development", "--canary", "50,25"), 1, "increase")
    assert not Deployment.objects.filter(version__version="1.1.0").exists()


def test_follow_a_canary_that_a_person_pauses_resumes_and_promotes(portal):
    cli = portal
    requested = cli(
        "deploy", "iris-api", "1.1.0", "--env", "development", "--canary", "20,50", "--bake", "2m", "--sticky", "--json"
    )
    assert requested.returncode == 0, requested.stderr
    body = json.loads(requested.stdout)
    assert (body["strategy"], body["steps"], body["bake_seconds"], body["sticky"]) == (
        "canary",
        [20, 50, 100],
        120,
        True,
    )
    deployment_id = body["id"]
    wait_for_status(deployment_id, {Status.CANARY}, timeout=60)

    shown = cli("deployments", "show", str(deployment_id))
    assert shown.returncode == 0, shown.stderr
    assert "canary: 20 % → 50 % → 100 %, each step 120 s, sticky" in shown.stdout
    assert "now: step 1 of 3, 20 % of requests" in shown.stdout

    again = cli("deploy", "iris-api", "1.0.0", "--env", "development")
    one_line_error(again, 1, "iris-api 1.1.0 is in a canary at 20 %: promote or abort it first")

    paused = cli("deployments", "pause", str(deployment_id))
    assert paused.returncode == 0, paused.stderr
    assert f"Deployment {deployment_id} is now canary (paused)." in paused.stderr
    one_line_error(cli("deployments", "pause", str(deployment_id)), 1, "already paused")
    # Paused, nothing is judged: the comparison stays as it was last (here, as if outcomes had come).
    side = {"requests": 80, "errors": 0, "error_rate": 0.0, "p50_ms": 4.0, "p95_ms": 9.0, "agreement": None}
    Deployment.objects.filter(pk=deployment_id).update(
        analysis={
            "quality_metric": "accuracy",
            "candidate": {**side, "version": "1.1.0", "labelled": 60, "quality": 0.9167},
            "stable": {**side, "version": "1.0.0", "labelled": 240, "quality": None},
        }
    )
    shown = cli("deployments", "show", str(deployment_id)).stdout
    assert (
        "candidate 1.1.0: 80 requests, 0 errors (0.0 %), p50 4 ms, p95 9 ms, live accuracy 91.7 % from 60 outcomes"
        in shown
    )
    assert "stable 1.0.0: 80 requests, 0 errors (0.0 %), p50 4 ms, p95 9 ms\n" in shown
    assert cli("deployments", "resume", str(deployment_id)).returncode == 0

    promoted = cli("deployments", "promote", str(deployment_id), "--json")
    assert promoted.returncode == 0, promoted.stderr
    assert json.loads(promoted.stdout)["status"] == "live"
    # --follow shows every step, and ends with the deployment live.
    followed = cli("deployments", "show", str(deployment_id), "--follow")
    assert followed.returncode == 0, followed.stderr
    assert "Canary: step 1 of 3" in followed.stderr
    assert "promoted 1.1.0 at 20 %" in followed.stderr

    one_line_error(cli("deployments", "abort", str(deployment_id)), 1, "only a canary or a shadow test can be aborted")
    one_line_error(cli("deployments", "pause", "999999"), 4, "999999")


def test_a_shadow_test_aborted_from_the_command_line(portal):
    requested = portal("deploy", "iris-api", "1.1.0", "--env", "development", "--shadow", "10", "--json")
    assert requested.returncode == 0, requested.stderr
    deployment_id = json.loads(requested.stdout)["id"]
    wait_for_status(deployment_id, {Status.SHADOW}, timeout=60)
    assert "shadow: 10 % of requests copied" in portal("deployments", "show", str(deployment_id)).stdout
    aborted = portal("deployments", "abort", str(deployment_id))
    assert aborted.returncode == 0, aborted.stderr
    assert f"Deployment {deployment_id} is now rolled back." in aborted.stderr
    time.sleep(0.1)
    # Following an ended deployment says how it ended, with exit code 6.
    followed = portal("deployments", "show", str(deployment_id), "--follow")
    assert followed.returncode == 6
    assert "rolled back" in followed.stderr
