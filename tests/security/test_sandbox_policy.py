"""Where no sandbox can be had, model code is refused unless an admin allowed it, and the
portal says so; inside the sandbox, the limits hold."""

from __future__ import annotations

import psutil
import pytest
from django.test import Client

from deployments import rollout, services
from deployments.models import Instance
from registry import services as registry
from registry.models import ModelVersion
from tests.factories import make_version, register, sample

NO_BWRAP = "/nonexistent/bwrap"


@pytest.fixture
def model(team, owner):
    return registry.registered_model_create(actor=owner, name="iris", team=team)


@pytest.fixture
def no_sandbox(settings):
    settings.SANDBOX_BWRAP = NO_BWRAP


@pytest.mark.django_db
def test_without_a_sandbox_the_check_is_refused_saying_why(api, member, model, iris_file, no_sandbox):
    response = register(api(member), "iris", iris_file)
    assert response.status_code == 503, response.content
    detail = response.json()["detail"]
    assert "cannot run the registration check in a sandbox" in detail and "not installed" in detail
    assert "ALLOW_UNSANDBOXED_MODEL_CHECK" in detail
    assert not ModelVersion.objects.exists()


@pytest.mark.django_db
def test_an_admin_may_allow_unsandboxed_checks(api, member, model, iris_file, no_sandbox, settings):
    settings.ALLOW_UNSANDBOXED_MODEL_CHECK = True
    assert register(api(member), "iris", iris_file).status_code == 201


@pytest.mark.django_db
def test_every_page_says_when_model_code_cannot_be_sandboxed(member, model, environments, no_sandbox, settings):
    client = Client()
    client.force_login(member)
    page = client.get("/models/").content.decode()
    assert 'id="sandbox-warning"' in page and "Registration checks are refused" in page
    assert "deployments are refused in every environment" in page
    settings.ALLOW_UNSANDBOXED_MODEL_CHECK = True
    environments["development"].allow_unsandboxed = True
    environments["development"].save()
    page = client.get("/models/").content.decode()
    assert "run <strong>unsandboxed</strong> (an admin allowed it)" in page
    assert "model servers run <strong>unsandboxed</strong> in development" in page


@pytest.mark.django_db
def test_with_a_sandbox_no_page_warns(member, model):
    client = Client()
    client.force_login(member)
    assert 'id="sandbox-warning"' not in client.get("/models/").content.decode()


@pytest.mark.django_db(transaction=True)
def test_without_a_sandbox_serving_is_refused_unless_the_environment_allows_it(
    owner, model, iris_file, environments, no_sandbox
):
    version = make_version(model, iris_file, actor=owner)
    service = services.service_create(actor=owner, name="iris-api", team=model.team, model=model)
    development = environments["development"]
    refused = services.deployment_request(actor=owner, service=service, version=version, environment=development)
    rollout.rollout(refused.pk, owner="test")
    refused.refresh_from_db()
    assert refused.status == "failed"
    assert "cannot run model servers in a sandbox" in refused.failure_reason
    assert "Allow unsandboxed" in refused.failure_reason

    development.allow_unsandboxed = True
    development.save()
    allowed = services.deployment_request(actor=owner, service=service, version=version, environment=development)
    rollout.rollout(allowed.pk, owner="test")
    allowed.refresh_from_db()
    assert allowed.status == "live", list(allowed.events.values_list("message", flat=True))
    instance = Instance.objects.get(deployment=allowed)
    assert instance.url.startswith("unix:")
    client = Client()
    client.force_login(owner)
    assert 'id="unsandboxed-note"' in client.get(f"/deployments/{allowed.pk}/").content.decode()


@pytest.mark.django_db(transaction=True)
def test_a_served_model_runs_inside_bubblewrap(owner, model, iris_file, environments):
    version = make_version(model, iris_file, actor=owner)
    service = services.service_create(actor=owner, name="iris-api", team=model.team, model=model)
    deployment = services.deployment_request(
        actor=owner, service=service, version=version, environment=environments["development"]
    )
    rollout.rollout(deployment.pk, owner="test")
    deployment.refresh_from_db()
    assert deployment.status == "live"
    instance = Instance.objects.get(deployment=deployment)
    server = next(
        p
        for p in psutil.process_iter(["cmdline"])
        if instance.name in (p.info["cmdline"] or []) and "bwrap" in p.info["cmdline"][0]
    )
    cmdline = server.info["cmdline"]
    assert {"--unshare-all", "--unshare-user", "--disable-userns", "--clearenv", "--new-session"} <= set(cmdline)
    assert cmdline[cmdline.index("--uid") + 1] == "65534"


PROCESSES = """
import os, time
children = 0
try:
    while children < 200:
        pid = os.fork()
        if pid == 0:
            time.sleep(5)
            os._exit(0)
        children += 1
except OSError:
    pass

def predict(instances):
    return [children for _ in instances]
"""


@pytest.mark.django_db
def test_model_code_cannot_start_more_processes_than_the_limit(api, member, model, tmp_path, settings):
    settings.SANDBOX_MAX_PROCESSES = 16
    path = tmp_path / "forker.py"
    path.write_text(PROCESSES)
    response = register(api(member), "iris", path, flavor="pyfunc", sample_input='{"instances": [1]}')
    assert response.status_code == 201, response.content
    started = ModelVersion.objects.get().sample_output[0]
    assert 0 < started < 16


@pytest.mark.django_db
def test_model_code_that_spins_is_stopped(api, member, model, tmp_path, settings):
    settings.MODEL_CHECK_TIMEOUT_SECONDS = 3
    path = tmp_path / "spin.py"
    path.write_text("while True:\n    pass\n")
    response = register(api(member), "iris", path, flavor="pyfunc", sample_input=sample())
    assert response.status_code == 400
    assert "did not load and predict its sample input within 3 s" in response.json()["detail"]
