"""What monitoring keeps in the database: drift scores per hour, drift thresholds, alert rules,
their firings, the notifications people are sent (deployments, access requests, expiring
tokens) with each person's choices, and the webhooks all of these are sent to with each
delivery's history.

The prediction log itself is not here: it lives in Parquet files (monitoring.store).
"""

from __future__ import annotations

import secrets
import urllib.parse

from django.conf import settings
from django.db import models
from django.utils import timezone

from deployments.models import Environment, Service


class DriftThresholds(models.Model):
    """How much drift a service tolerates; defaults when a service has no row."""

    service = models.OneToOneField(Service, on_delete=models.CASCADE, related_name="drift_thresholds")
    psi_warn = models.FloatField(default=0.1, help_text="PSI from which a feature is shown as drifting.")
    psi_alert = models.FloatField(default=0.25, help_text="PSI from which a feature has drifted significantly.")
    missing_rate = models.FloatField(default=0.05, help_text="Share of instances missing a feature.")
    out_of_range_rate = models.FloatField(default=0.05, help_text="Share of values outside the reference's range.")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"drift thresholds of {self.service.name}"

    @classmethod
    def effective(cls, service: Service) -> DriftThresholds:
        return cls.objects.filter(service=service).first() or cls(service=service)


class DriftScore(models.Model):
    """One input feature's drift for one version over one hour (the current hour is rescored
    until it ends)."""

    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="+")
    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="+")
    version = models.CharField(max_length=40)
    feature = models.CharField(max_length=200)
    hour = models.DateTimeField()
    count = models.PositiveIntegerField(help_text="Instances scored.")
    psi = models.FloatField(null=True, help_text="Population stability index against the reference.")
    missing_rate = models.FloatField()
    out_of_range_rate = models.FloatField(help_text="Numbers outside the reference's range, or unseen categories.")
    reference_rows = models.PositiveIntegerField(default=0)
    scored_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["service", "environment", "version", "feature", "hour"], name="driftscore_unique_hour"
            )
        ]
        indexes = [models.Index(fields=["service", "environment", "hour"])]

    def __str__(self) -> str:
        return f"{self.feature} of {self.version} at {self.hour:%Y-%m-%d %H:00}: PSI {self.psi}"


class Metric(models.TextChoices):
    ACCURACY = "accuracy", "live accuracy"
    PRECISION = "precision_macro", "live macro precision"
    RECALL = "recall_macro", "live macro recall"
    F1 = "f1_macro", "live macro F1"
    R2 = "r2", "live R²"
    MAE = "mae", "live MAE"
    RMSE = "rmse", "live RMSE"
    DRIFT = "drift_psi", "drift (largest PSI of a feature)"
    MISSING = "missing_rate", "missing values (share)"
    OUT_OF_RANGE = "out_of_range_rate", "values out of the reference's range (share)"
    ERROR_RATE = "error_rate", "error rate (share of 5xx)"
    LATENCY = "latency_p95_ms", "p95 latency (ms)"


QUALITY_METRICS = {Metric.ACCURACY, Metric.PRECISION, Metric.RECALL, Metric.F1, Metric.R2, Metric.MAE, Metric.RMSE}
DRIFT_METRICS = {Metric.DRIFT, Metric.MISSING, Metric.OUT_OF_RANGE}
# Metrics where lower is worse: the rule fires below its threshold; every other one above.
FIRES_BELOW = {Metric.ACCURACY, Metric.PRECISION, Metric.RECALL, Metric.F1, Metric.R2}


class AlertState(models.TextChoices):
    OK = "ok", "OK"
    FIRING = "firing", "Firing"
    NO_DATA = "no_data", "Not enough data"


class AlertRule(models.Model):
    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="alert_rules")
    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="+")
    metric = models.CharField(max_length=24, choices=Metric.choices)
    threshold = models.FloatField()
    window_minutes = models.PositiveIntegerField(default=60)
    min_samples = models.PositiveIntegerField(
        default=50, help_text="Requests, labelled predictions or instances the window must hold before judging."
    )
    enabled = models.BooleanField(default=True)
    state = models.CharField(max_length=10, choices=AlertState.choices, default=AlertState.NO_DATA)
    value = models.FloatField(null=True, blank=True, help_text="What the metric was at the last evaluation.")
    detail = models.CharField(max_length=300, blank=True, help_text="Which version or feature the value is from.")
    evaluated_at = models.DateTimeField(null=True, blank=True)
    changed_at = models.DateTimeField(null=True, blank=True, help_text="When the state last changed.")
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["service_id", "environment_id", "metric", "id"]

    def __str__(self) -> str:
        return f"{self.service.name} {self.environment.name}: {self.condition}"

    @property
    def fires_below(self) -> bool:
        return self.metric in FIRES_BELOW

    @property
    def condition(self) -> str:
        word = "below" if self.fires_below else "above"
        return f"{Metric(self.metric).label} {word} {self.threshold:g} over {self.window_minutes} min"

    def breached(self, value: float) -> bool:
        return value < self.threshold if self.fires_below else value > self.threshold


class AlertEvent(models.Model):
    # Kept when its rule is deleted: what fired and cleared is history.
    rule = models.ForeignKey(AlertRule, null=True, on_delete=models.SET_NULL, related_name="events")
    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="+")
    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="+")
    state = models.CharField(max_length=10, choices=[("fired", "fired"), ("cleared", "cleared")])
    value = models.FloatField(null=True)
    message = models.CharField(max_length=500)
    emailed = models.PositiveIntegerField(default=0, help_text="How many people the email went to.")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.message


class EventType(models.TextChoices):
    """What a webhook may subscribe to and a person may be emailed about."""

    ALERT_FIRED = "alert.fired", "An alert rule of your team's service fired"
    ALERT_CLEARED = "alert.cleared", "A firing alert rule of your team's service cleared"
    DEPLOYMENT_PENDING_APPROVAL = "deployment.pending_approval", "A deployment waits for your approval (approvers)"
    DEPLOYMENT_APPROVED = "deployment.approved", "A deployment you requested, or of your team, was approved"
    DEPLOYMENT_REJECTED = "deployment.rejected", "A deployment you requested, or of your team, was rejected"
    DEPLOYMENT_FAILED = "deployment.failed", "A deployment you requested, or of your team, failed"
    DEPLOYMENT_LIVE = "deployment.live", "A deployment you requested, or of your team, is live"
    ACCESS_REQUEST_CREATED = (
        "access_request.created",
        "Someone asks for access to your team's service (owners and maintainers)",
    )
    ACCESS_REQUEST_DECIDED = "access_request.decided", "Your access request was approved, rejected or withdrawn"
    TOKEN_EXPIRING = "token.expiring", "One of your API tokens expires within 7 days"


ALERT_EVENTS = [EventType.ALERT_FIRED.value, EventType.ALERT_CLEARED.value]


def all_event_types() -> list[str]:
    return list(EventType.values)


def new_webhook_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


class Webhook(models.Model):
    """Where a service's events (its alerts, deployments and access requests, its consumers'
    expiring tokens) are POSTed, signed with HMAC-SHA256 of a secret shown once."""

    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="webhooks")
    url = models.URLField(max_length=500)
    events = models.JSONField(default=all_event_types, help_text="The event types sent here (EventType values).")
    # Kept as is, not as a digest: the portal needs it to sign every delivery.
    secret = models.CharField(max_length=100, default=new_webhook_secret)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        # Never the whole URL (audit records and logs show this): its path may be its secret.
        return f"webhook #{self.pk} to {self.host}"

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.url).hostname or ""


class DeliveryState(models.TextChoices):
    PENDING = "pending", "Pending"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed"


class WebhookDelivery(models.Model):
    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    event = models.ForeignKey(AlertEvent, null=True, on_delete=models.SET_NULL, related_name="deliveries")
    notification = models.ForeignKey(
        "Notification", null=True, blank=True, on_delete=models.SET_NULL, related_name="deliveries"
    )
    event_type = models.CharField(max_length=40, choices=EventType.choices, default=EventType.ALERT_FIRED)
    body = models.TextField(help_text="The JSON sent, byte for byte as signed.")
    state = models.CharField(max_length=10, choices=DeliveryState.choices, default=DeliveryState.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    response_status = models.PositiveIntegerField(null=True, blank=True)
    error = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"delivery {self.pk} to {self.webhook}: {self.state}"


class Notification(models.Model):
    """One thing worth telling people (a deployment waiting or decided, failed or live, an
    access request, a token about to expire): written in the transaction of the change that
    caused it, then sent by a task once that has committed (emails to `recipients` who want
    them, a delivery to each subscribed webhook of `service_ids`). An outbox: one not sent
    after a while (the broker was away) is sent by the periodic resend."""

    type = models.CharField(max_length=40, choices=EventType.choices)
    # What makes it this event and no other: the same event is never notified twice
    # ("deployment:12:live", "token:7:expiring").
    key = models.CharField(max_length=100, unique=True)
    service_ids = models.JSONField(default=list, help_text="The services whose webhooks get it.")
    subject = models.CharField(max_length=300)
    body = models.TextField(help_text="The email's plain text, without the footer.")
    url = models.CharField(max_length=500, help_text="The page it is about (absolute).")
    payload = models.JSONField(help_text="The webhook body.")
    recipients = models.JSONField(default=list, help_text="Ids of the users it may be emailed to.")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    sent_at = models.DateTimeField(null=True, blank=True, help_text="When a task took it to send.")
    emailed = models.PositiveIntegerField(default=0, help_text="How many people the email went to.")

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.subject


class NotificationPreference(models.Model):
    """A person's choice for one event type; without a row, they get its email."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    event_type = models.CharField(max_length=40, choices=EventType.choices)
    email = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "event_type"], name="notificationpreference_unique_type")
        ]

    def __str__(self) -> str:
        return f"{self.event_type} by email for user {self.user_id}: {'on' if self.email else 'off'}"
