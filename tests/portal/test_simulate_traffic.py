"""The demo's traffic: predictions through the real gateway and ground truth, so the
Performance page fills."""

from __future__ import annotations

import shutil

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from deployments import services
from monitoring import selectors, tasks
from tests.factories import deploy_now

pytestmark = pytest.mark.django_db(transaction=True)


def test_simulated_traffic_fills_the_log_and_live_quality(
    iris_service, owner, service_account, environments, gateway, monkeypatch
):
    shutil.rmtree(settings.PREDICTION_LOG_ROOT, ignore_errors=True)
    monkeypatch.setattr(settings, "GATEWAY_URL", gateway.url)
    deploy_now(iris_service, owner, environments["development"], iris_service.model.versions.get())
    services.grant_create(actor=owner, service=iris_service, user=service_account)
    call_command("simulate_traffic", "iris-api", consumer=service_account.username, seconds=3, rate=40, labelled=1.0)
    import time

    time.sleep(0.5)  # past the gateway's log flush
    assert tasks.drain_predictions() > 0
    [quality] = selectors.quality_by_version(user=owner, service="iris-api", environment="development")
    assert quality.labelled > 10 and quality.metrics["accuracy"] > 0.7  # iris is easy for the demo model


def test_it_says_what_is_missing(iris_service, environments, service_account):
    with pytest.raises(CommandError, match="Nothing of 'iris-api' is live in development"):
        call_command("simulate_traffic", "iris-api", consumer=service_account.username, seconds=1)
