"""The `portal` command from sign-in to a prediction, against real processes: the web server
(gunicorn), a Celery worker, the gateway and a model server."""

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher

from portal.demo_models import iris_instances
from scripts.stack import stop
from tests.factories import PASSWORD
from tests.portal_client.harness import PORTAL, Cli
from tests.support import start_portal_server

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker, pytest.mark.cli]


def web_password(user) -> None:
    """The test process hashes passwords with a fast hasher the web server does not accept;
    give this user a hash the server can check."""
    user.password = PBKDF2PasswordHasher().encode(PASSWORD, "clisalt", iterations=1000)
    user.save(update_fields=["password"])


@pytest.fixture
def stack(redis_url, tmp_path, celery_worker, gateway, environments, cli_home):
    server = start_portal_server(redis_url, tmp_path / "web.log", GATEWAY_URL=gateway.url)
    try:
        yield Cli(home=cli_home, url=server.url)
    finally:
        stop(server)


def test_login_register_deploy_and_predict(stack, member, team, iris_file, tmp_path):
    portal = stack
    web_password(member)

    # As make run's banner says: the address given once, then remembered in the config file.
    signed_in = portal(
        "login",
        "--url",
        portal.url,
        "--username",
        member.username,
        "--password-stdin",
        input=PASSWORD + "\n",
        PORTAL_URL="",
    )
    assert signed_in.returncode == 0, signed_in.stderr
    assert "Signed in" in signed_in.stderr and "Traceback" not in signed_in.stderr
    config = portal.home / "config" / "config.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700
    assert json.loads(config.read_text())["token"].startswith("ptl_")
    assert json.loads(config.read_text())["url"] == portal.url
    assert portal("whoami", PORTAL_URL="").stdout.startswith(member.username)

    assert portal("models", "create", "iris", "--team", team.name).returncode == 0
    sample = tmp_path / "sample.json"
    sample.write_text(json.dumps({"instances": iris_instances()}))
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps(iris_file.metrics))
    registered = portal(
        "versions",
        "register",
        "iris",
        str(iris_file),
        "--version",
        "1.0.0",
        "--sample-input",
        str(sample),
        "--metrics",
        str(metrics),
        "--json",
    )
    assert registered.returncode == 0, registered.stderr
    version = json.loads(registered.stdout)
    assert version["version"] == "1.0.0" and version["flavor"] == "sklearn"  # flavor from the .joblib suffix
    assert version["metrics"] == iris_file.metrics

    listed = json.loads(portal("versions", "list", "iris", "--json").stdout)
    assert [v["version"] for v in listed] == ["1.0.0"]

    created = portal("--json", "models", "show", "iris")
    assert json.loads(created.stdout)["latest_version"] == "1.0.0"

    from deployments import services
    from registry.models import RegisteredModel

    services.service_create(actor=member, name="iris-api", team=team, model=RegisteredModel.objects.get(name="iris"))
    deployed = portal("deploy", "iris-api", "1.0.0", "--env", "development", "--follow")
    assert deployed.returncode == 0, deployed.stderr
    assert "is live" in deployed.stderr and "Smoke test" in deployed.stderr
    assert f"Live: {stack.url}" not in deployed.stderr  # the endpoint is the gateway's, not the portal's
    curl = deployed.stdout.strip()
    assert curl.startswith("curl -sS -X POST") and "/serve/development/iris-api/v1/predict" in curl
    assert "ptl_" not in curl  # never the secret on screen: a reference to it
    # The line runs as printed in a shell where `portal` is not on PATH (no venv activated).
    bare_path = ":".join(p for p in os.environ["PATH"].split(":") if p and Path(p) != PORTAL.parent)
    assert shutil.which("portal", path=bare_path) is None
    assert f"$({PORTAL} print-token)" in curl
    if shutil.which("curl", path=bare_path):
        ran = subprocess.run(
            ["/bin/sh", "-c", curl], capture_output=True, text=True, timeout=60, env=portal.env(PATH=bare_path)
        )
        assert ran.returncode == 0, ran.stderr
        called = json.loads(ran.stdout)
        assert called["predictions"] == [0] and called["model_version"] == "1.0.0", called
    elif os.environ.get("CI"):  # elsewhere the rest of the journey is still worth checking
        pytest.fail("curl is not installed: scripts/test.py installs it, and CI must run the printed line.")

    # A token the gateway would refuse (no invoke scope) is told so beside the line it cannot run.
    from accounts.models import ApiToken
    from accounts.services import token_create

    _, read_write = token_create(actor=None, user=member, name="no invoke", scopes=["read", "write"])
    followed = portal("deployments", "show", _deployment_id(portal), "--follow", PORTAL_TOKEN=read_write)
    assert followed.returncode == 0, followed.stderr
    assert '"Authorization: Bearer $PORTAL_TOKEN"' in followed.stdout
    assert "has the scopes read, write; the gateway needs one with invoke" in " ".join(followed.stderr.split())
    assert "invoke" not in portal("deployments", "show", _deployment_id(portal), "--follow").stderr
    ApiToken.objects.filter(name="no invoke").delete()  # the sign-in's token is the one the rest follows

    shown = json.loads(portal("deployments", "show", _deployment_id(portal), "--json").stdout)
    assert shown["status"] == "live" and shown["instances"][0]["state"] == "ready"
    data = tmp_path / "x.json"
    data.write_text(json.dumps({"instances": iris_instances(count=2)}))
    predicted = portal("predict", "development", "iris-api", "1", "--data", str(data))
    assert predicted.returncode == 0, predicted.stderr
    answer = json.loads(predicted.stdout)
    assert answer.pop("prediction_id") and answer == {"predictions": [0, 1], "model_version": "1.0.0"}

    logs = portal("logs", _deployment_id(portal), "--tail", "50")
    assert logs.returncode == 0 and "loaded sklearn model" in logs.stdout

    tokens = json.loads(portal("tokens", "list", "--json").stdout)
    assert len(tokens) == 1 and tokens[0]["state"] == "active"
    assert portal("logout").returncode == 0
    assert "token" not in json.loads(config.read_text())
    assert ApiToken.objects.get(user=member).revoked_at is not None  # revoked on the portal, not just forgotten
    again = portal("models", "list")
    assert again.returncode == 3 and "portal login" in again.stderr


def _deployment_id(portal: Cli) -> str:
    rows = json.loads(portal("deployments", "list", "iris-api", "--json").stdout)
    return str(rows[0]["id"])
