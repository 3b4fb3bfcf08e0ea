"""Alerts with real parts: rules over real Parquet files, the email through Django's mail
backend, the webhook signed and POSTed to a real HTTP server, retried when it fails; and end
to end, a drifted stream through the gateway firing the rule in a real worker."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import io
import json
import threading
import time
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis
from django.core import mail
from django.test import Client

from accounts.models import AuditEvent
from deployments import services as deployment_services
from gateway import contract
from monitoring import alerts, notify, tasks
from monitoring.models import AlertEvent, AlertRule, Webhook, WebhookDelivery
from portal.demo_models import iris_csv
from scripts.stack import stop
from tests.factories import bearer_client, deploy_now
from tests.monitoring.test_drift import flowers, log_inputs
from tests.support import call, eventually, start_worker


class Receiver:
    """A real HTTP server that records the webhooks it gets; the first `fail` answer 500."""

    def __init__(self, fail: int = 0, redirect_to: str = ""):
        self.received: list[tuple[dict, bytes]] = []
        self.fail = fail
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                if redirect_to:
                    self.send_response(302)
                    self.send_header("Location", redirect_to)
                    self.end_headers()
                    return
                failing = len(receiver.received) <= receiver.fail
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/portal"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = []

    def start(fail: int = 0, redirect_to: str = "") -> Receiver:
        made.append(Receiver(fail, redirect_to))
        return made[-1]

    yield start
    for r in made:
        r.close()


def signed(headers: dict, body: bytes, secret: str) -> bool:
    expected = hmac.new(secret.encode(), headers["X-Portal-Timestamp"].encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest(headers["X-Portal-Signature"], "sha256=" + expected.hexdigest())


def mailed(directory) -> list:
    """The messages Django's file email backend wrote (a file per connection, messages
    separated by a line of dashes)."""
    return [
        message_from_bytes(part)
        for path in directory.glob("*.log")
        for part in path.read_bytes().split(b"\n" + b"-" * 79 + b"\n")
        if part.strip()
    ]


def drift_rule(api, owner, **extra) -> dict:
    body = {"environment": "development", "metric": "drift_psi", "threshold": 0.25, "window_minutes": 10}
    answer = api(owner).post("/api/v1/services/iris-api/alert-rules", {**body, **extra}, format="json")
    assert answer.status_code == 201, answer.content
    return answer.json()


@pytest.mark.django_db
def test_rules_are_checked_kept_to_the_team_and_audited(iris_service, owner, maintainer, member, outsider, api):
    url = "/api/v1/services/iris-api/alert-rules"
    rule = drift_rule(api, maintainer)
    assert rule["state"] == "no_data" and rule["fires"] == "above"
    assert rule["condition"] == "drift (largest PSI of a feature) above 0.25 over 10 min"
    accuracy = (
        api(owner)
        .post(url, {"environment": "production", "metric": "accuracy", "threshold": 0.8}, format="json")
        .json()
    )
    assert accuracy["fires"] == "below" and accuracy["window_minutes"] == 60

    def refused(body: dict) -> str:
        answer = api(owner).post(url, {"environment": "development", **body}, format="json")
        assert answer.status_code == 400, answer.content
        return answer.json()["detail"]

    assert "between 0 and 1" in refused({"metric": "error_rate", "threshold": 5})
    assert "two hours" in refused({"metric": "latency_p95_ms", "threshold": 200, "window_minutes": 600})
    assert "metric" in refused({"metric": "accuracy_score", "threshold": 0.8})
    assert "treshold" in refused({"metric": "accuracy", "treshold": 0.8})
    unknown_env = api(owner).post(url, {"environment": "moon", "metric": "accuracy", "threshold": 0.8}, format="json")
    assert unknown_env.status_code == 400 and "moon" in unknown_env.json()["detail"]

    assert (
        api(member)
        .post(url, {"environment": "development", "metric": "accuracy", "threshold": 1}, format="json")
        .status_code
        == 403
    )
    assert api(member).get(url).status_code == 200  # the team sees the rules
    assert api(outsider).get(url).status_code == 404
    assert api(outsider).get(f"/api/v1/alert-rules/{rule['id']}").status_code == 404
    assert api(outsider).get("/api/v1/services/iris-api/alerts").status_code == 404
    assert api(outsider).get("/api/v1/services/iris-api/webhooks").status_code == 404
    assert api(member).get("/api/v1/services/iris-api/webhooks").status_code == 403  # URLs can carry secrets
    assert api(member).get(url, {"environment": "moon"}).status_code == 400  # a bad parameter, not a missing page
    assert api(member).get("/api/v1/services/iris-api/drift", {"environment": "moon"}).status_code == 400

    changed = api(owner).patch(f"/api/v1/alert-rules/{rule['id']}", {"threshold": 0.3}, format="json")
    assert changed.status_code == 200 and changed.json()["threshold"] == 0.3
    assert api(owner).delete(f"/api/v1/alert-rules/{rule['id']}").status_code == 204
    actions = list(AuditEvent.objects.filter(action__startswith="alert_rule.").values_list("action", flat=True))
    assert sorted(actions) == ["alert_rule.change", "alert_rule.create", "alert_rule.create", "alert_rule.delete"]


@pytest.mark.django_db
def test_a_drift_rule_fires_emails_the_team_and_sends_a_signed_webhook_then_clears(
    iris_service, owner, member, api, receiver, settings
):
    settings.WEBHOOK_RETRY_SECONDS = 0
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]  # the test's receiver, on this machine
    owner.email, member.email = "olga@example.com", "mia@example.com"
    owner.save()
    member.save()
    api(owner).put(
        "/api/v1/models/iris/versions/1.0.0/reference",
        {"file": io.BytesIO(iris_csv())},
        format="multipart",
    )
    hook_server = receiver(fail=1)
    created = api(owner).post("/api/v1/services/iris-api/webhooks", {"url": hook_server.url}, format="json")
    assert created.status_code == 201 and created.json()["secret"].startswith("whsec_")
    secret = created.json()["secret"]
    assert "secret" not in api(owner).get("/api/v1/services/iris-api/webhooks").json()[0]
    rule_id = drift_rule(api, owner, min_samples=100)["id"]

    log_inputs(flowers(50, shift=2.0))  # too few to judge
    assert tasks.evaluate_alerts() == 0
    assert AlertRule.objects.get(pk=rule_id).state == "no_data"

    log_inputs(flowers(300, shift=2.0, seed=5), at=time.time() - 1)
    assert tasks.evaluate_alerts() == 1
    rule = AlertRule.objects.get(pk=rule_id)
    assert rule.state == "firing" and rule.value > 0.25 and "feature petal_length" in rule.detail
    [event] = AlertEvent.objects.all()
    assert event.state == "fired" and "petal_length" in event.message

    # One message to each member: nobody sees who else was told.
    assert sorted(address for email in mail.outbox for address in email.to) == ["mia@example.com", "olga@example.com"]
    email = mail.outbox[0]
    assert len(email.to) == 1 and event.message in mail.outbox[1].body
    assert "FIRING: iris-api (development)" in email.subject and event.message in email.body
    assert f"{settings.PORTAL_URL}/services/iris-api/performance/?environment=development#alerts" in email.body

    # The delivery task ran in the test (Celery's eager mode is off: run it as the worker would).
    [delivery] = WebhookDelivery.objects.all()
    tasks.deliver_webhook.run(delivery.pk)  # answered 500: recorded, tried again later
    delivery.refresh_from_db()
    assert delivery.state == "pending" and delivery.attempts == 1 and delivery.response_status == 500
    assert delivery.next_attempt_at is not None
    notify.attempt(delivery)
    delivery.refresh_from_db()
    assert delivery.state == "delivered" and delivery.attempts == 2 and delivery.response_status == 204

    headers, body = hook_server.received[-1]
    assert signed(headers, body, secret) and not signed(headers, body, "whsec_wrong")
    assert headers["X-Portal-Event"] == "alert.fired" and headers["X-Portal-Delivery"] == str(delivery.pk)
    sent = json.loads(body)
    assert sent["service"] == "iris-api" and sent["rule"]["metric"] == "drift_psi" and sent["value"] > 0.25
    listed = api(owner).get(f"/api/v1/webhooks/{created.json()['id']}/deliveries").json()["results"]
    assert [(d["state"], d["attempts"]) for d in listed] == [("delivered", 2)]

    # Later, inputs like the reference again: the rule clears.
    later = time.time() + 20 * 60
    log_inputs(flowers(300, seed=9), at=later)
    event = alerts.evaluate(
        AlertRule.objects.get(pk=rule_id), tasks.store(), now=dt.datetime.fromtimestamp(later + 1, dt.UTC)
    )
    assert event is not None and event.state == "cleared"
    assert AlertRule.objects.get(pk=rule_id).state == "ok"


@pytest.mark.django_db
def test_error_rate_and_latency_rules_read_what_the_gateway_counted(iris_service, owner, api, redis_url):
    client = redis.Redis.from_url(redis_url)
    minute = int(time.time() // 60) * 60
    # Only these counts in the window: not what other tests' gateways counted for iris-api.
    client.delete(*(contract.minute_key(minute - 60 * n) for n in range(6)))
    series = contract.series("development", "iris-api", 1, "1.0.0", "c")
    fields = {
        contract.metric_field(series, contract.REQUESTS): 100,
        contract.metric_field(series, contract.SERVER_ERRORS): 7,
        contract.metric_field(series, f"{contract.BUCKET}{len(contract.BUCKETS_MS) - 1}"): 100,
    }
    client.hset(contract.minute_key(minute), mapping=fields)
    errors = (
        api(owner)
        .post(
            "/api/v1/services/iris-api/alert-rules",
            {"environment": "development", "metric": "error_rate", "threshold": 0.05, "window_minutes": 5},
            format="json",
        )
        .json()
    )
    rule = AlertRule.objects.get(pk=errors["id"])
    reading = alerts.read(rule, tasks.store(), dt.datetime.now(dt.UTC))
    assert reading.value == pytest.approx(0.07) and reading.samples == 100
    assert alerts.evaluate(rule, tasks.store()).state == "fired"
    rule.metric, rule.threshold = "latency_p95_ms", 10_000
    assert alerts.read(rule, tasks.store(), dt.datetime.now(dt.UTC)).value == contract.BUCKETS_MS[-1]


@pytest.mark.django_db(transaction=True)
def test_a_drifted_stream_through_the_gateway_fires_in_the_worker(
    iris_service, owner, service_account, environments, gateway, consumer, api, receiver, redis_url, tmp_path, settings
):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    """End to end: the gateway logs, the worker (with its scheduler) drains, scores drift,
    evaluates the rule and delivers the webhook; the team gets the email as a file."""
    deploy_now(iris_service, owner, environments["development"], iris_service.model.versions.get())
    deployment_services.grant_create(actor=owner, service=iris_service, user=service_account)
    owner.email = "olga@example.com"
    owner.save()
    api(owner).put(
        "/api/v1/models/iris/versions/1.0.0/reference",
        {"file": io.BytesIO(iris_csv())},
        format="multipart",
    )
    hook_server = receiver()
    secret = (
        api(owner).post("/api/v1/services/iris-api/webhooks", {"url": hook_server.url}, format="json").json()["secret"]
    )
    drift_rule(api, owner, min_samples=40)
    url = f"{gateway.url}/serve/development/iris-api/v1/predict"
    eventually(lambda: call(url, token=consumer, body={"instances": flowers(1)})[0] == 200)
    for instance in flowers(60, shift=2.0):
        assert call(url, token=consumer, body={"instances": [instance]})[0] == 200

    mail_dir = tmp_path / "mail"
    worker = start_worker(
        redis_url,
        tmp_path / "worker.log",
        beat=True,
        env={
            "ALERT_INTERVAL_SECONDS": "1",
            "DRIFT_INTERVAL_SECONDS": "1",
            "EMAIL_BACKEND": "file",
            "EMAIL_FILE_PATH": str(mail_dir),
            "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        },
    )
    try:
        eventually(lambda: hook_server.received, timeout=60, interval=0.5)
        # The team was also told the deployment is live; the alert's email is the one that fired.
        firing = eventually(lambda: [m for m in mailed(mail_dir) if "FIRING" in m["Subject"]], timeout=20, interval=0.5)
    finally:
        stop(worker)
    headers, body = hook_server.received[0]
    assert signed(headers, body, secret) and json.loads(body)["type"] == "alert.fired"
    assert firing[0]["To"] == "olga@example.com"
    rules = api(owner).get("/api/v1/services/iris-api/alert-rules").json()
    assert rules[0]["state"] == "firing"
    drift = api(owner).get("/api/v1/services/iris-api/drift", {"environment": "development"}).json()["results"]
    assert any(s["feature"] == "petal_length" and s["psi"] > 0.25 for s in drift)
    assert settings.PREDICTION_LOG_ROOT.exists()


@pytest.mark.django_db
def test_the_pages_show_rules_firing_alerts_and_a_webhook_secret_once(
    iris_service, owner, member, outsider, api, settings
):
    settings.WEBHOOK_ALLOWED_HOSTS = ["hooks.example.com"]
    browser = Client()
    browser.force_login(owner)
    page = "/services/iris-api/performance/?environment=development"
    added = browser.post(
        "/services/iris-api/performance/alert-rules",
        {
            "environment": "development",
            "metric": "drift_psi",
            "threshold": "0.25",
            "window_minutes": "5",
            "min_samples": "20",
        },
        follow=True,
    )
    assert "Alert rule added: drift (largest PSI of a feature) above 0.25 over 5 min." in added.content.decode()
    refused = browser.post(
        "/services/iris-api/performance/alert-rules",
        {
            "environment": "development",
            "metric": "error_rate",
            "threshold": "3",
            "window_minutes": "5",
            "min_samples": "1",
        },
    )
    assert refused.status_code == 400 and "between 0 and 1" in refused.content.decode()

    hook = browser.post(
        "/services/iris-api/performance/webhooks",
        {"environment": "development", "url": "https://hooks.example.com/x", "events": ["alert.fired"]},
    )
    assert hook.status_code == 201 and hook["Cache-Control"] == "no-store"
    assert 'data-testid="webhook-secret"' in hook.content.decode() and "whsec_" in hook.content.decode()
    again = browser.get(page).content.decode()
    assert "hooks.example.com/x" in again and "whsec_" not in again

    api(owner).put("/api/v1/models/iris/versions/1.0.0/reference", {"file": io.BytesIO(iris_csv())}, format="multipart")
    log_inputs(flowers(100, shift=2.0))
    tasks.evaluate_alerts()
    for who in (owner, member):
        browser.force_login(who)
        assert "1 alert firing" in browser.get("/services/iris-api/").content.decode()
        dashboard = browser.get("/").content.decode()
        assert "1 firing" in dashboard and "fired" in dashboard
    browser.force_login(outsider)
    assert "firing" not in browser.get("/").content.decode()

    browser.force_login(owner)
    rule = AlertRule.objects.get()
    deleted = browser.post(f"/alert-rules/{rule.pk}", {"action": "delete"}, follow=True)
    assert "Alert rule deleted" in deleted.content.decode() and not AlertRule.objects.exists()
    browser.force_login(member)  # may see the service, not its webhooks
    webhook = Webhook.objects.get()
    assert browser.post(f"/webhooks/{webhook.pk}/remove").status_code == 404 and Webhook.objects.exists()


@pytest.mark.cli
@pytest.mark.django_db(transaction=True)
def test_the_command_sets_a_reference_and_adds_lists_and_deletes_rules(iris_service, owner, cli, tmp_path):
    token = bearer_client(owner).raw_token
    reference = tmp_path / "validation.csv"
    reference.write_bytes(iris_csv())
    set_ = cli("versions", "reference", "iris", "1.0.0", str(reference), PORTAL_TOKEN=token)
    assert set_.returncode == 0, set_.stderr
    assert "Reference of iris 1.0.0: 150 rows of validation.csv." in set_.stderr and "petal_length" in set_.stdout
    missing = cli("versions", "reference", "iris", "1.0.0", str(tmp_path / "nope.csv"), PORTAL_TOKEN=token)
    assert missing.returncode != 0

    added = cli(
        "alerts", "add", "iris-api", "--env", "development", "--metric", "accuracy", "--threshold", "0.8",
        "--json", PORTAL_TOKEN=token,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    rule = json.loads(added.stdout)
    assert rule["condition"] == "live accuracy below 0.8 over 60 min"
    wrong = cli("alerts", "add", "iris-api", "--env", "development", "--metric", "error_rate", "--threshold", "2",
                PORTAL_TOKEN=token)  # fmt: skip
    assert wrong.returncode != 0 and "between 0 and 1" in wrong.stderr
    listed = cli("alerts", "list", "iris-api", PORTAL_TOKEN=token)
    assert listed.returncode == 0 and "live accuracy below 0.8" in listed.stdout
    performance = cli("services", "performance", "iris-api", "--env", "development", PORTAL_TOKEN=token)
    assert performance.returncode == 0 and "Alert rules" in performance.stdout
    deleted = cli("alerts", "delete", str(rule["id"]), "--yes", PORTAL_TOKEN=token)
    assert deleted.returncode == 0 and f"Alert rule #{rule['id']} deleted." in deleted.stderr
    assert not AlertRule.objects.exists()


@pytest.mark.django_db
def test_webhooks_to_inside_addresses_are_refused_and_redirects_not_followed(
    iris_service, owner, api, receiver, settings
):
    url = "/api/v1/services/iris-api/webhooks"

    def refused(address: str) -> str:
        answer = api(owner).post(url, {"url": address}, format="json")
        assert answer.status_code == 400, answer.content
        return answer.json()["detail"]

    assert "does not send to" in refused("http://127.0.0.1:8000/hook")
    assert "does not send to" in refused("http://169.254.169.254/latest/meta-data")  # cloud metadata
    assert "does not send to" in refused("http://[::1]/hook")
    assert "user name or password" in refused("https://user:secret@hooks.example.com/x")
    assert "private network" in refused("http://10.1.2.3/hook")
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = True
    assert api(owner).post(url, {"url": "http://10.1.2.3/hook"}, format="json").status_code == 201
    assert "does not send to" in refused("http://127.0.0.1:8000/hook")  # never this machine

    # A receiver that answers with a redirect: a failed delivery, and the redirect is not followed.
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    target = receiver()
    redirecting = receiver(redirect_to=target.url)
    hook = Webhook.objects.create(service=iris_service, url=redirecting.url)
    delivery = WebhookDelivery.objects.create(webhook=hook, body='{"type": "alert.fired"}')
    assert notify.attempt(delivery) is False
    delivery.refresh_from_db()
    assert delivery.response_status == 302 and "302" in delivery.error and delivery.state == "pending"
    assert len(redirecting.received) == 1 and not target.received
    audit = AuditEvent.objects.filter(action="webhook.create").first()
    assert audit.data["host"] == "10.1.2.3" and "/hook" not in audit.target_repr
    assert "/hook" not in str(audit.data)


@pytest.mark.django_db
def test_a_firing_rule_turned_off_or_deleted_clears_for_those_who_were_told(iris_service, owner, member, api, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["hooks.example.com"]
    owner.email = "olga@example.com"
    owner.save()
    api(owner).put("/api/v1/models/iris/versions/1.0.0/reference", {"file": io.BytesIO(iris_csv())}, format="multipart")
    api(owner).post("/api/v1/services/iris-api/webhooks", {"url": "https://hooks.example.com/x"}, format="json")
    first, second = drift_rule(api, owner, min_samples=20)["id"], drift_rule(api, owner, min_samples=20)["id"]
    log_inputs(flowers(100, shift=2.0))
    assert tasks.evaluate_alerts() == 2
    mail.outbox.clear()

    off = api(owner).patch(f"/api/v1/alert-rules/{first}", {"enabled": False}, format="json")
    assert off.status_code == 200 and off.json()["state"] == "no_data"
    cleared = AlertEvent.objects.filter(rule_id=first, state="cleared").get()
    assert "no longer watched: the rule was turned off by olivia-owner" in cleared.message
    assert cleared.deliveries.count() == 1 and "cleared" in mail.outbox[0].subject

    assert api(owner).delete(f"/api/v1/alert-rules/{second}").status_code == 204
    kept = AlertEvent.objects.filter(rule__isnull=True, state="cleared").get()  # history outlives the rule
    assert (
        "deleted by olivia-owner" in kept.message and json.loads(kept.deliveries.get().body)["type"] == "alert.cleared"
    )
    listed = api(member).get("/api/v1/services/iris-api/alerts").json()["results"]
    assert [e["state"] for e in listed] == ["cleared", "cleared", "fired", "fired"]
    assert listed[0]["rule"] is None
