"""The Performance page in a real browser: a team owner sets an alert rule and a webhook, sees
the drift heat map and the rule fire, and deletes the rule after confirming."""

import json
import time

import pytest
from playwright.sync_api import expect

from monitoring import tasks
from monitoring.store import PredictionStore
from portal.demo_models import iris_csv
from registry import services as registry

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_owner_sets_an_alert_watches_it_fire_and_deletes_it(page, sign_in, iris_service, owner, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["hooks.example.com"]  # no such host to resolve here
    registry.version_reference_set(
        actor=owner, version=iris_service.model.versions.get(), filename="iris.csv", data=iris_csv()
    )
    sign_in(page, owner.username)
    page.goto("/services/iris-api/performance/?environment=development")
    expect(page.get_by_text("No alert rules in development.")).to_be_visible()

    page.get_by_text("Add a rule").click()
    page.get_by_label("Metric").select_option("drift_psi")
    page.get_by_label("Threshold").fill("0.25")
    page.get_by_label("Window (minutes)").fill("10")
    page.get_by_label("Judge from").fill("20")
    page.get_by_role("button", name="Add rule").click()
    added = "Alert rule added: drift (largest PSI of a feature) above 0.25 over 10 min."
    expect(page.get_by_text(added)).to_be_visible()

    page.get_by_text("Add a webhook").click()
    page.get_by_label("Webhook URL").fill("https://hooks.example.com/portal")
    page.get_by_role("button", name="Add webhook").click()
    secret = page.get_by_test_id("webhook-secret")
    expect(secret).to_be_visible()
    assert secret.input_value().startswith("whsec_")

    # Inputs shifted away from the reference: scored, then the rule fires.
    now = time.time()
    PredictionStore(settings.PREDICTION_LOG_ROOT).write(
        [
            [
                f"{int(now * 1000) + n:011x}{n:010x}",
                now,
                "iris-api",
                "development",
                1,
                "1.0.0",
                1,
                200,
                1.0,
                1,
                json.dumps(
                    {
                        "instances": [
                            {"sepal_length": 5.0, "sepal_width": 3.0, "petal_length": 8.0 + n % 3, "petal_width": 1.0}
                        ]
                    }
                ),
                '{"predictions": [2]}',
            ]
            for n in range(60)
        ]
    )
    tasks.score_drift()
    tasks.evaluate_alerts()
    page.goto("/services/iris-api/performance/?environment=development")
    heat_map = page.get_by_role("table").filter(has_text="petal_length")
    expect(heat_map.locator("td.cell.alert").first).to_be_visible()
    expect(page.locator("#alerts").get_by_text("Firing")).to_be_visible()
    expect(page.locator("#alerts ol.events")).to_contain_text("fired")
    page.goto("/services/iris-api/")
    expect(page.get_by_role("heading", name="1 alert firing")).to_be_visible()

    page.goto("/services/iris-api/performance/?environment=development")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#alerts").get_by_role("button", name="Delete").first.click()
    expect(page.get_by_text("Alert rule deleted")).to_be_visible()
    expect(page.get_by_text("No alert rules in development.")).to_be_visible()
