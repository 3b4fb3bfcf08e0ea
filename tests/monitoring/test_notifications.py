"""Notifications with real parts: emails through Django's SMTP backend to a real SMTP server
(aiosmtpd, on a free port), webhooks signed and POSTed to a real HTTP server and retried when
it answers 500, sent by a real Celery worker where the portal sends them from one; each
person's choices, and an expiring token told once."""

from __future__ import annotations

import datetime as dt
import importlib
import json
import logging
import socket
import threading
from email import message_from_bytes, policy
from email.message import Message

import pytest
from aiosmtpd.controller import Controller
from django.conf import settings as django_settings
from django.test import Client
from django.utils import timezone

from accounts.models import ApiToken
from accounts.services import token_create
from deployments import services as deployment_services
from deployments import states
from deployments.models import Deployment, Status
from monitoring import tasks
from monitoring.models import Notification, NotificationPreference, Webhook, WebhookDelivery
from scripts.stack import stop
from tests.monitoring import test_alerts
from tests.monitoring.test_alerts import signed
from tests.support import eventually, start_worker, wait_for_status

receiver = test_alerts.receiver  # the real HTTP server that records webhooks (a fixture)

DEPLOYMENT_EVENTS = [
    "deployment.pending_approval",
    "deployment.approved",
    "deployment.rejected",
    "deployment.failed",
    "deployment.live",
]


class Inbox:
    """What a real SMTP server received: (envelope recipients, parsed message) per message."""

    def __init__(self):
        self.messages: list[tuple[list[str], Message]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content, policy=policy.default)))
        return "250 Message accepted"

    def to(self, address: str) -> list[Message]:
        with self.lock:
            return [message for rcpt, message in self.messages if address in rcpt]

    def subjects(self, address: str) -> list[str]:
        return [message["Subject"] for message in self.to(address)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtp(settings):
    """A real SMTP server, and the portal's email settings pointed at it."""
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command at INFO
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", controller.port
    settings.EMAIL_USE_TLS, settings.EMAIL_HOST_USER, settings.EMAIL_HOST_PASSWORD = False, "", ""
    inbox.port = controller.port
    yield inbox
    controller.stop()


@pytest.fixture
def addresses(owner, maintainer, member, viewer, outsider, approver):
    """Everyone in the cast has an email address: owner@example.com and so on."""
    for role, user in [
        ("owner", owner),
        ("maintainer", maintainer),
        ("member", member),
        ("viewer", viewer),
        ("outsider", outsider),
        ("approver", approver),
    ]:
        user.email = f"{role}@example.com"
        user.save()


def body_of(message: Message) -> str:
    return message.get_payload(decode=True).decode()


def send_all() -> None:
    """Send every notification written so far, as the worker's task would."""
    for pk in Notification.objects.filter(sent_at=None).order_by("pk").values_list("pk", flat=True):
        tasks.send_notification.run(pk)


@pytest.mark.django_db(transaction=True)
def test_a_production_deployment_emails_approvers_then_the_requester_and_signs_its_webhooks(
    iris_service, owner, member, approver, addresses, api, smtp, receiver, redis_url, tmp_path, settings
):
    """End to end in a real worker: waiting for approval reaches the approvers (not the
    requester), the webhook's first answer is a 500 and the delivery is tried again, and once
    approved the requester and the team hear that it is approved and then live."""
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    hook_server = receiver(fail=1)
    created = api(owner).post(
        "/api/v1/services/iris-api/webhooks", {"url": hook_server.url, "events": DEPLOYMENT_EVENTS}, format="json"
    )
    assert created.status_code == 201, created.content
    assert created.json()["events"] == DEPLOYMENT_EVENTS
    worker = start_worker(
        redis_url,
        tmp_path / "worker.log",
        env={
            "EMAIL_BACKEND": "smtp",
            "EMAIL_HOST": "127.0.0.1",
            "EMAIL_PORT": str(smtp.port),
            "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
            "WEBHOOK_RETRY_SECONDS": "1",
        },
    )
    try:
        answer = api(member).post(
            "/api/v1/services/iris-api/deployments", {"version": "1.0.0", "environment": "production"}, format="json"
        )
        assert answer.status_code == 201 and answer.json()["status"] == "pending_approval", answer.content
        deployment_id = answer.json()["id"]
        page = f"{django_settings.PORTAL_URL}/deployments/{deployment_id}/"

        [waiting] = eventually(lambda: smtp.to("approver@example.com"), timeout=30, interval=0.2)
        assert waiting["Subject"] == "[Portal] iris-api 1.0.0 to production is waiting for your approval"
        assert "mia-member asks to deploy iris-api 1.0.0 to production." in body_of(waiting)
        assert page in body_of(waiting)
        assert f"{django_settings.PORTAL_URL}/account/notifications" in body_of(waiting)
        # Delivered on the second try: the first answer was a 500.
        eventually(lambda: len(hook_server.received) >= 2, timeout=30, interval=0.2)
        (first_headers, first_body), (headers, body) = hook_server.received[:2]
        assert first_body == body and first_headers["X-Portal-Delivery"] == headers["X-Portal-Delivery"]
        assert signed(headers, body, created.json()["secret"]) and not signed(headers, body, "whsec_wrong")
        assert headers["X-Portal-Event"] == "deployment.pending_approval"
        sent = json.loads(body)
        assert sent["type"] == "deployment.pending_approval" and sent["url"] == page
        assert sent["deployment"]["id"] == deployment_id and sent["deployment"]["requested_by"] == "mia-member"
        assert sent["service"] == "iris-api" and sent["environment"] == "production" and sent["team"] == "vision"
        history = api(owner).get(f"/api/v1/webhooks/{created.json()['id']}/deliveries").json()["results"]
        assert [(d["event_type"], d["state"], d["attempts"], d["response_status"]) for d in history] == [
            ("deployment.pending_approval", "delivered", 2, 204)
        ]

        approved = api(approver).post(
            f"/api/v1/deployments/{deployment_id}/approve", {"comment": "ship it"}, format="json"
        )
        assert approved.status_code == 200, approved.content
        deployment = wait_for_status(deployment_id, {Status.LIVE, Status.FAILED})
        assert deployment.status == Status.LIVE, list(deployment.events.values_list("message", flat=True))
        live = "[Portal] iris-api 1.0.0 is live in production"
        eventually(lambda: live in smtp.subjects("member@example.com"), timeout=30, interval=0.2)
        assert smtp.subjects("member@example.com") == [
            "[Portal] iris-api 1.0.0 to production was approved by april-approver",
            live,
        ]
        eventually(lambda: live in smtp.subjects("owner@example.com"), timeout=10, interval=0.2)
        [live_email] = [m for m in smtp.to("member@example.com") if m["Subject"] == live]
        assert page in body_of(live_email) and "Requested by mia-member." in body_of(live_email)
        # Each person gets a message of their own: nobody sees who else was told.
        assert all(len(rcpt) == 1 for rcpt, _ in smtp.messages)
        # The approver is told of nothing they did, and the requester never asked to approve.
        assert smtp.subjects("approver@example.com") == [waiting["Subject"]]
        assert not [s for s in smtp.subjects("member@example.com") if "waiting" in s]

        eventually(lambda: len(hook_server.received) >= 4, timeout=30, interval=0.2)
        events = [h["X-Portal-Event"] for h, _ in hook_server.received]
        assert events == [
            "deployment.pending_approval",
            "deployment.pending_approval",
            "deployment.approved",
            "deployment.live",
        ]
        assert all(signed(h, b, created.json()["secret"]) for h, b in hook_server.received)
    finally:
        stop(worker)


@pytest.mark.django_db
def test_a_failed_deployment_tells_the_requester_and_the_team_as_each_chooses(
    iris_service, owner, maintainer, member, viewer, approver, addresses, environments, api, smtp
):
    # The owner wants no news of failures; the viewer wants no email at all.
    answer = api(owner).put("/api/v1/users/me/notifications", {"email": {"deployment.failed": False}}, format="json")
    assert answer.status_code == 200 and answer.json()["email"]["deployment.failed"] is False
    everything_off = dict.fromkeys(answer.json()["email"], False)
    assert (
        api(viewer).put("/api/v1/users/me/notifications", {"email": everything_off}, format="json").status_code == 200
    )

    deployment = deployment_services.deployment_request(
        actor=member,
        service=iris_service,
        version=iris_service.model.versions.get(),
        environment=environments["production"],
    )
    deployment_services.deployment_approve(actor=approver, deployment=deployment, comment="ok")
    # How the rollout engine ends a deployment whose new instance never became ready.
    assert states.transition(
        Deployment.objects.get(pk=deployment.pk),
        Status.FAILED,
        message="The new instance did not answer its readiness check within 60 s; the old version keeps serving.",
        failure_reason="readiness check timed out",
    )
    send_all()

    failed = "[Portal] iris-api 1.0.0 to production failed"
    approved = "[Portal] iris-api 1.0.0 to production was approved by april-approver"
    assert smtp.subjects("member@example.com") == [approved, failed]
    assert smtp.subjects("maintainer@example.com") == [approved, failed]
    assert smtp.subjects("owner@example.com") == [approved]  # failures turned off
    assert smtp.subjects("viewer@example.com") == []  # everything turned off
    [email] = [m for m in smtp.to("member@example.com") if m["Subject"] == failed]
    text = body_of(email)
    assert "did not answer its readiness check" in text and "Why: readiness check timed out" in text
    assert f"{django_settings.PORTAL_URL}/deployments/{deployment.pk}/" in text
    assert Notification.objects.get(key=f"deployment:{deployment.pk}:failed").emailed == 2

    # Sending again (a task run twice) sends nothing more.
    before = len(smtp.messages)
    for pk in Notification.objects.values_list("pk", flat=True):
        tasks.send_notification.run(pk)
    assert len(smtp.messages) == before


@pytest.mark.django_db
def test_no_email_and_no_webhook_for_those_who_did_not_ask(
    iris_service, owner, member, approver, addresses, environments, api, smtp, receiver, settings
):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    hook_server = receiver()
    alerts_only = api(owner).post(
        "/api/v1/services/iris-api/webhooks",
        {"url": hook_server.url, "events": ["alert.fired", "alert.cleared"]},
        format="json",
    )
    assert alerts_only.status_code == 201
    off = {"email": {"deployment.pending_approval": False}}
    assert api(approver).put("/api/v1/users/me/notifications", off, format="json").status_code == 200

    deployment_services.deployment_request(
        actor=member,
        service=iris_service,
        version=iris_service.model.versions.get(),
        environment=environments["production"],
    )
    send_all()
    [notification] = Notification.objects.all()
    assert notification.type == "deployment.pending_approval" and notification.emailed == 0
    assert smtp.messages == []
    assert not WebhookDelivery.objects.exists() and hook_server.received == []

    # A deployment where no approval is needed tells nobody it was "approved".
    deployment_services.deployment_request(
        actor=member,
        service=iris_service,
        version=iris_service.model.versions.get(),
        environment=environments["development"],
    )
    assert list(Notification.objects.values_list("type", flat=True)) == ["deployment.pending_approval"]


@pytest.mark.django_db
def test_access_requests_tell_the_deciders_then_the_requester(
    iris_service, owner, maintainer, member, outsider, addresses, smtp, receiver, api, settings
):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    hook_server = receiver()
    hook = (
        api(owner)
        .post(
            "/api/v1/services/iris-api/webhooks",
            {"url": hook_server.url, "events": ["access_request.created", "access_request.decided"]},
            format="json",
        )
        .json()
    )
    access_request = deployment_services.access_request_create(
        actor=outsider, service=iris_service, reason="The fraud team's scoring job needs the flower classes."
    )
    send_all()
    asked = "[Portal] oscar-outsider asks for access to iris-api"
    assert smtp.subjects("owner@example.com") == [asked]
    assert smtp.subjects("maintainer@example.com") == [asked]
    assert smtp.subjects("member@example.com") == []  # members do not decide
    assert smtp.subjects("outsider@example.com") == []
    assert "Reason: The fraud team's scoring job" in body_of(smtp.to("owner@example.com")[0])
    assert f"{django_settings.PORTAL_URL}/access-requests/" in body_of(smtp.to("owner@example.com")[0])

    deployment_services.access_request_approve(actor=owner, access_request=access_request, comment="Welcome.")
    send_all()
    [decided] = smtp.to("outsider@example.com")
    assert decided["Subject"] == "[Portal] Your access request to iris-api was approved"
    assert "was approved by olivia-owner." in body_of(decided) and "Comment: Welcome." in body_of(decided)
    assert smtp.subjects("owner@example.com") == [asked]  # the one who decided is not told

    for delivery in WebhookDelivery.objects.order_by("pk"):
        tasks.deliver_webhook.run(delivery.pk)
    assert [h["X-Portal-Event"] for h, _ in hook_server.received] == [
        "access_request.created",
        "access_request.decided",
    ]
    headers, body = hook_server.received[1]
    assert signed(headers, body, hook["secret"])
    sent = json.loads(body)["access_request"]
    assert (
        sent["requester"] == "oscar-outsider" and sent["status"] == "approved" and sent["decided_by"] == "olivia-owner"
    )


@pytest.mark.django_db
def test_an_expiring_token_is_told_once_by_the_periodic_task(owner, member, addresses, smtp):
    now = timezone.now()
    soon = token_create(actor=owner, user=owner, name="ci deploys", expires_in_days=30)[0]
    ApiToken.objects.filter(pk=soon.pk).update(expires_at=now + dt.timedelta(days=3))
    token_create(actor=owner, user=owner, name="later", expires_in_days=30)
    revoked = token_create(actor=member, user=member, name="gone", expires_in_days=30)[0]
    ApiToken.objects.filter(pk=revoked.pk).update(expires_at=now + dt.timedelta(days=2), revoked_at=now)

    assert tasks.notify_expiring_tokens() == 1
    send_all()
    [email] = smtp.to("owner@example.com")
    assert email["Subject"] == f"[Portal] Your API token 'ci deploys' expires on {now + dt.timedelta(days=3):%Y-%m-%d}"
    assert soon.prefix in body_of(email) and f"{django_settings.PORTAL_URL}/tokens/" in body_of(email)
    assert smtp.to("member@example.com") == []

    assert tasks.notify_expiring_tokens() == 0  # the next run, an hour later: told already
    send_all()
    assert len(smtp.messages) == 1


@pytest.mark.django_db
def test_preferences_page_api_and_refusals(owner, api):
    answer = api(owner).get("/api/v1/users/me/notifications")
    assert answer.status_code == 200
    assert set(answer.json()["email"]) >= {"deployment.pending_approval", "token.expiring", "alert.fired"}
    assert all(answer.json()["email"].values())  # everything on by default

    def refused(body) -> str:
        answer = api(owner).put("/api/v1/users/me/notifications", body, format="json")
        assert answer.status_code == 400, answer.content
        return json.dumps(answer.json())

    assert "deployment.live" in refused({"email": {"deployment.gone": False}})  # names the known types
    assert "valid boolean" in refused({"email": {"deployment.live": "maybe"}})
    assert "email" in refused({"mail": {"deployment.live": False}})
    assert not NotificationPreference.objects.exists()
    assert Client().get("/api/v1/users/me/notifications").status_code in (401, 403)

    browser = Client()
    browser.force_login(owner)
    page = browser.get("/account/notifications")
    assert page.status_code == 200
    html = page.content.decode()
    assert "A deployment waits for your approval" in html and 'href="/account/notifications"' in html
    assert "has no email address" in html  # the owner has none yet: told why nothing arrives
    form = {"email_token__expiring": "on"}  # only this one ticked: every other type off
    assert browser.post("/account/notifications", form).status_code == 302
    choices = api(owner).get("/api/v1/users/me/notifications").json()["email"]
    assert choices["token.expiring"] is True and choices["deployment.live"] is False
    assert Client().get("/account/notifications").status_code == 302  # to the sign-in page


@pytest.mark.django_db
def test_webhook_event_types_are_checked(iris_service, owner, api, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["hooks.example.com"]
    url = "https://hooks.example.com/portal"
    unknown = api(owner).post(
        "/api/v1/services/iris-api/webhooks", {"url": url, "events": ["deploy.done"]}, format="json"
    )
    assert unknown.status_code == 400 and "events" in json.dumps(unknown.json())
    empty = api(owner).post("/api/v1/services/iris-api/webhooks", {"url": url, "events": []}, format="json")
    assert empty.status_code == 400
    every = api(owner).post("/api/v1/services/iris-api/webhooks", {"url": url}, format="json")
    assert every.status_code == 201 and "token.expiring" in every.json()["events"]
    listed = api(owner).get("/api/v1/services/iris-api/webhooks").json()
    assert listed[0]["events"] == every.json()["events"]


@pytest.mark.django_db
def test_a_webhooks_events_change_keeping_its_address_and_secret(
    iris_service, owner, maintainer, member, api, settings
):
    from accounts.models import AuditAction, AuditEvent

    settings.WEBHOOK_ALLOWED_HOSTS = ["hooks.example.com"]
    made = api(owner).post(
        "/api/v1/services/iris-api/webhooks",
        {"url": "https://hooks.example.com/portal", "events": ["alert.fired"]},
        format="json",
    )
    hook = Webhook.objects.get(pk=made.json()["id"])
    secret = hook.secret

    changed = api(maintainer).patch(
        f"/api/v1/webhooks/{hook.pk}", {"events": ["deployment.live", "alert.fired"]}, format="json"
    )
    assert changed.status_code == 200, changed.content
    assert changed.json()["events"] == ["alert.fired", "deployment.live"]  # in their usual order
    hook.refresh_from_db()
    assert hook.events == ["alert.fired", "deployment.live"] and hook.secret == secret
    assert hook.url == "https://hooks.example.com/portal"
    audit = AuditEvent.objects.get(action=AuditAction.WEBHOOK_CHANGE)
    assert audit.data == {"host": "hooks.example.com", "events": [["alert.fired"], ["alert.fired", "deployment.live"]]}

    for body in ({"events": []}, {"events": ["deploy.done"]}, {}, {"events": ["alert.fired"], "url": "https://x"}):
        refused = api(owner).patch(f"/api/v1/webhooks/{hook.pk}", body, format="json")
        assert refused.status_code == 400, (body, refused.content)
    # Only the team's owners and maintainers see webhooks at all (their URLs can carry secrets).
    assert (
        api(member).patch(f"/api/v1/webhooks/{hook.pk}", {"events": ["alert.fired"]}, format="json").status_code == 404
    )

    # From the page: the webhook's own form, with ids of its own.
    page = Client()
    page.force_login(owner)
    performance = page.get("/services/iris-api/performance/?environment=development").content.decode()
    assert f'id="hook{hook.pk}-events_0"' in performance and "Change its events" in performance
    answer = page.post(
        f"/webhooks/{hook.pk}/events", {"events": ["token.expiring"], "environment": "development"}, follow=True
    )
    assert "now gets: token.expiring" in answer.content.decode()
    hook.refresh_from_db()
    assert hook.events == ["token.expiring"] and hook.secret == secret
    answer = page.post(f"/webhooks/{hook.pk}/events", {"environment": "development"}, follow=True)
    assert "Choose at least one event to send, or remove the webhook." in answer.content.decode()
    assert Webhook.objects.get(pk=hook.pk).events == ["token.expiring"]


@pytest.mark.django_db
def test_a_consumers_expiring_token_reaches_its_creator_and_the_services_it_calls(
    iris_service, owner, admin, service_account, addresses, api, smtp, receiver, settings
):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    admin.email = "admin@example.com"
    admin.save()
    hook_server = receiver()
    secret = (
        api(owner)
        .post(
            "/api/v1/services/iris-api/webhooks", {"url": hook_server.url, "events": ["token.expiring"]}, format="json"
        )
        .json()["secret"]
    )
    deployment_services.grant_create(actor=owner, service=iris_service, user=service_account)
    token, raw = token_create(actor=admin, user=service_account, name="scoring job", expires_in_days=5)

    assert tasks.notify_expiring_tokens() == 1
    send_all()
    [email] = smtp.to("admin@example.com")  # the service account has no mailbox: who made the token is told
    assert email["Subject"].startswith("[Portal] The API token of svc-consumer 'scoring job' expires on ")
    [delivery] = WebhookDelivery.objects.all()
    tasks.deliver_webhook.run(delivery.pk)
    [(headers, body)] = hook_server.received
    assert headers["X-Portal-Event"] == "token.expiring" and signed(headers, body, secret)
    sent = json.loads(body)["token"]
    assert sent["name"] == "scoring job" and sent["user"] == "svc-consumer" and sent["prefix"] == token.prefix
    assert raw not in body.decode()  # the token itself is never sent anywhere


@pytest.mark.django_db
def test_webhooks_made_before_event_types_keep_sending_alerts_only(iris_service):
    """The data step of migration 0003, run on webhooks and deliveries as they were."""
    from django.apps import apps

    migration = importlib.import_module("monitoring.migrations.0003_notifications_and_webhook_events")
    hook = Webhook.objects.create(service=iris_service, url="https://hooks.example.com/old")
    fired = WebhookDelivery.objects.create(webhook=hook, body='{"type":"alert.fired","event_id":1}')
    cleared = WebhookDelivery.objects.create(webhook=hook, body='{"type":"alert.cleared","event_id":1}')
    migration.alert_webhooks_keep_their_events(apps, None)
    hook.refresh_from_db()
    assert hook.events == ["alert.fired", "alert.cleared"]
    assert WebhookDelivery.objects.get(pk=fired.pk).event_type == "alert.fired"
    assert WebhookDelivery.objects.get(pk=cleared.pk).event_type == "alert.cleared"


@pytest.mark.django_db
def test_the_admin_lists_notifications_and_webhooks_without_their_secrets(
    iris_service, owner, member, admin, environments
):
    hook = Webhook.objects.create(service=iris_service, url="https://hooks.example.com/T0K3N-in-the-path")
    deployment_services.deployment_request(
        actor=member,
        service=iris_service,
        version=iris_service.model.versions.get(),
        environment=environments["production"],
    )
    browser = Client()
    browser.force_login(admin)
    listed = browser.get("/admin/monitoring/notification/")
    assert listed.status_code == 200
    assert "iris-api 1.0.0 to production is waiting for your approval" in listed.content.decode()
    page = browser.get(f"/admin/monitoring/webhook/{hook.pk}/change/").content.decode()
    assert "hooks.example.com" in page and "T0K3N" not in page and hook.secret not in page
    assert browser.post(f"/admin/monitoring/webhook/{hook.pk}/delete/", {"post": "yes"}).status_code == 403


@pytest.mark.django_db(transaction=True)
def test_a_notification_left_unsent_is_sent_by_the_periodic_resend(member, addresses, smtp, redis_url, tmp_path):
    """The broker was away when the change committed: the notification waits in its table until
    the scheduler's resend hands it to a worker."""
    left = Notification.objects.create(
        type="deployment.live",
        key="deployment:999:live",
        subject="[Portal] iris-api 1.0.0 is live in production",
        body="1.0.0 is live.",
        url=f"{django_settings.PORTAL_URL}/deployments/999/",
        payload={"type": "deployment.live"},
        recipients=[member.pk],
        created_at=timezone.now() - dt.timedelta(minutes=10),
    )
    fresh = Notification.objects.create(
        type="deployment.live",
        key="deployment:1000:live",
        subject="[Portal] fresh",
        body="Still on its way.",
        url=django_settings.PORTAL_URL,
        payload={},
        recipients=[member.pk],
    )
    worker = start_worker(
        redis_url,
        tmp_path / "worker.log",
        env={"EMAIL_BACKEND": "smtp", "EMAIL_HOST": "127.0.0.1", "EMAIL_PORT": str(smtp.port)},
    )
    try:
        tasks.resend_webhooks()
        [email] = eventually(lambda: smtp.to("member@example.com"), timeout=30, interval=0.2)
    finally:
        stop(worker)
    assert email["Subject"] == left.subject
    left.refresh_from_db()
    fresh.refresh_from_db()
    assert left.sent_at is not None and left.emailed == 1
    assert fresh.sent_at is None  # recent: its own task may still be on its way


@pytest.mark.django_db
def test_old_notifications_and_deliveries_are_swept_but_not_those_still_retried(iris_service, member):
    hook = Webhook.objects.create(service=iris_service, url="https://hooks.example.com/portal")
    long_ago = timezone.now() - dt.timedelta(days=91)

    def notification(key: str, created_at) -> Notification:
        return Notification.objects.create(
            type="deployment.live",
            key=key,
            subject=key,
            body="",
            url=django_settings.PORTAL_URL,
            payload={},
            recipients=[member.pk],
            created_at=created_at,
        )

    old, retried, recent = (
        notification("deployment:1:live", long_ago),
        notification("deployment:2:live", long_ago),
        notification("deployment:3:live", timezone.now() - dt.timedelta(days=89)),
    )
    deliveries = {
        "old delivered": (old, "delivered", long_ago),
        "old still retried": (retried, "pending", long_ago),
        "recent failed": (recent, "failed", timezone.now() - dt.timedelta(days=89)),
    }
    for name, (about, state, created_at) in deliveries.items():
        WebhookDelivery.objects.create(webhook=hook, notification=about, state=state, body=name, created_at=created_at)

    assert tasks.sweep_notifications() == 2  # the old delivered delivery, then its notification
    assert set(Notification.objects.values_list("key", flat=True)) == {"deployment:2:live", "deployment:3:live"}
    assert set(WebhookDelivery.objects.values_list("body", flat=True)) == {"old still retried", "recent failed"}
    assert tasks.sweep_notifications(keep_days=1) == 2  # the recent ones too, with a shorter retention
    assert set(WebhookDelivery.objects.values_list("body", flat=True)) == {"old still retried"}
