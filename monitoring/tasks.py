"""Celery tasks of monitoring: drain the gateways' prediction log into Parquet, sweep old days,
score drift, evaluate alert rules, send notifications (and find the tokens about to expire),
and deliver webhooks."""

from __future__ import annotations

import datetime as dt
import logging
import time

import redis
from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import ApiToken
from deployments.models import Environment, PredictionLogging, Service
from gateway import contract
from monitoring import alerts, drift, notify, receivers
from monitoring.models import AlertEvent, AlertRule, DeliveryState, DriftScore, Notification, WebhookDelivery
from monitoring.store import PredictionStore
from registry.models import ModelVersion

log = logging.getLogger(__name__)

GROUP = "portal-drain"
# A batch read but not acknowledged this long ago (its worker died) is taken over.
CLAIM_IDLE_MS = 60_000
# A token's owner is told this many days before it expires (EventType.TOKEN_EXPIRING says so).
TOKEN_NOTICE_DAYS = 7


def store() -> PredictionStore:
    return PredictionStore(settings.PREDICTION_LOG_ROOT)


def _client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=10, socket_connect_timeout=2)


@shared_task(name="monitoring.drain_predictions", ignore_result=True)
def drain_predictions(max_seconds: float = 20.0, count: int = 50) -> int:
    """Move logged predictions from the stream into Parquet files; how many records moved.

    Reads as one consumer of a consumer group, so several workers can drain at once, and
    acknowledges (and deletes) entries only once their records are on disk: a worker that
    dies in between leaves them pending, and the next drain takes them over.
    """
    client = _client()
    try:
        client.xgroup_create(contract.KEY_PREDICTIONS, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    consumer = f"drain-{time.time_ns():x}"
    moved = 0
    deadline = time.monotonic() + max_seconds
    _, claimed, _ = client.xautoclaim(contract.KEY_PREDICTIONS, GROUP, consumer, CLAIM_IDLE_MS, count=count)
    entries = list(claimed)
    while True:
        if not entries:
            answer = client.xreadgroup(GROUP, consumer, {contract.KEY_PREDICTIONS: ">"}, count=count)
            entries = answer[0][1] if answer else []
        if not entries:
            break
        records = []
        for _entry_id, fields in entries:
            try:
                records += contract.PredictionBatch.decode(fields[b"records"]).records
            except (KeyError, ValueError, TypeError):
                log.warning("skipped a prediction-log entry that is not a batch of records")
        if records:
            store().write(records)
        ids = [entry_id for entry_id, _ in entries]
        client.xack(contract.KEY_PREDICTIONS, GROUP, *ids)
        client.xdel(contract.KEY_PREDICTIONS, *ids)
        moved += len(records)
        entries = []
        if time.monotonic() > deadline:
            break
    return moved


@shared_task(name="monitoring.sweep_predictions", ignore_result=True)
def sweep_predictions() -> int:
    """Remove logged predictions older than each service's retention; how many days removed."""
    log_store = store()
    services = {s.name: s for s in Service.objects.all()}
    environments = {e.name: e for e in Environment.objects.all()}
    policies = {(p.service_id, p.environment_id): p for p in PredictionLogging.objects.all()}
    removed = 0
    for service_name, environment_name in log_store.services():
        service, environment = services.get(service_name), environments.get(environment_name)
        if service is None or environment is None:
            keep = settings.PREDICTION_LOG_RETENTION_DAYS  # a deleted service: the default retention
        else:
            policy = policies.get((service.pk, environment.pk))
            keep = policy.retention_days if policy else settings.PREDICTION_LOG_RETENTION_DAYS
        removed += log_store.sweep(service_name, environment_name, keep)
    return removed


SWEEP_BATCH = 1000


@shared_task(name="monitoring.sweep_notifications", ignore_result=True)
def sweep_notifications(keep_days: int | None = None) -> int:
    """Remove notifications and webhook deliveries older than NOTIFICATION_RETENTION_DAYS
    (the pages show the latest; the audit log keeps what happened), in batches so that no
    delete holds the tables for long; deliveries still being retried stay. How many rows went."""
    cutoff = timezone.now() - dt.timedelta(days=keep_days or settings.NOTIFICATION_RETENTION_DAYS)
    removed = 0
    old_deliveries = WebhookDelivery.objects.filter(created_at__lt=cutoff).exclude(state=DeliveryState.PENDING)
    old_notifications = Notification.objects.filter(created_at__lt=cutoff).exclude(
        deliveries__state=DeliveryState.PENDING
    )
    for rows in (old_deliveries, old_notifications):
        while batch := list(rows.values_list("pk", flat=True)[:SWEEP_BATCH]):
            removed += rows.model.objects.filter(pk__in=batch).delete()[0]
    return removed


@shared_task(name="monitoring.compact_predictions", ignore_result=True)
def compact_predictions() -> int:
    """Merge each day's small Parquet files (one per drain) into one; how many were merged."""
    log_store = store()
    merged = 0
    for directory in log_store.partitions():
        try:
            merged += log_store.compact(directory)
        except (OSError, ValueError):  # a damaged file: leave the partition as it is, try the others
            log.exception("could not compact %s", directory)
    return merged


@shared_task(name="monitoring.score_drift", ignore_result=True)
def score_drift() -> int:
    """Score the drift of every logged service's inputs for the current hour (and the hour
    before, in the first minutes of a new one, so it ends complete); how many scores written."""
    now = timezone.now()
    hour = now.replace(minute=0, second=0, microsecond=0)
    hours = [hour - dt.timedelta(hours=1), hour] if now - hour < dt.timedelta(minutes=5) else [hour]
    log_store = store()
    written = 0
    services = {s.name: s for s in Service.objects.all()}
    environments = {e.name: e for e in Environment.objects.all()}
    for service_name, environment_name in log_store.services():
        service, environment = services.get(service_name), environments.get(environment_name)
        if service is None or environment is None:
            continue
        for start in hours:
            try:
                written += drift_record(log_store, service, environment, start, min(start + dt.timedelta(hours=1), now))
            except Exception:  # one service's bad data must not keep the others from being scored
                log.exception("could not score the drift of %s in %s", service_name, environment_name)
    return written


def drift_record(log_store: PredictionStore, service: Service, environment: Environment, start, end) -> int:
    versions = {v.version: v for v in ModelVersion.objects.filter(model_id=service.model_id)}
    profiles = drift.reference_profiles(versions)
    scores = drift.score(
        log_store, service=service.name, environment=environment.name, profiles=profiles, since=start, until=end
    )
    written = 0
    for version, features in scores.items():
        for feature in features:
            DriftScore.objects.update_or_create(
                service=service,
                environment=environment,
                version=version,
                feature=feature.feature[:200],
                hour=start,
                defaults={
                    "count": feature.count,
                    "psi": feature.psi,
                    "missing_rate": feature.missing_rate,
                    "out_of_range_rate": feature.out_of_range_rate,
                    "reference_rows": profiles[version].get("rows", 0),
                    "scored_at": timezone.now(),
                },
            )
            written += 1
    return written


@shared_task(name="monitoring.evaluate_alerts", ignore_result=True)
def evaluate_alerts() -> int:
    """Evaluate every enabled alert rule; how many fired or cleared."""
    log_store = store()
    changed = 0
    for rule in AlertRule.objects.filter(enabled=True).select_related("service__team", "environment"):
        try:
            event = alerts.evaluate(rule, log_store)
            if event is not None:
                changed += 1
                alert_notify(event)
        except Exception:  # one broken rule, or the broker away a moment, must not stop the others
            log.exception("could not evaluate alert rule %s", rule.pk)
    return changed


def alert_notify(event: AlertEvent) -> None:
    """Send an event's webhook deliveries (in the background, with retries) and its email."""
    for delivery in event.deliveries.filter(state=DeliveryState.PENDING).values_list("pk", flat=True):
        notify.queue(deliver_webhook, delivery)
    alerts.email(event)


@shared_task(name="monitoring.resend_webhooks", ignore_result=True)
def resend_webhooks() -> int:
    """Send again the deliveries whose next try is well past (their queued retry was lost: a
    broker restart, a worker that died): deliveries are at least once, never silently dropped.
    Receivers tell a repeat by its X-Portal-Delivery header. Notifications never taken to be
    sent (the broker was away when their change committed) are sent too."""
    grace = dt.timedelta(seconds=2 * settings.WEBHOOK_TIMEOUT_SECONDS + 60)
    now = timezone.now()
    unsent = Notification.objects.filter(sent_at=None, created_at__lt=now - grace)
    for notification in list(unsent.values_list("pk", flat=True)[:500]):
        send_notification.delay(notification)
    overdue = WebhookDelivery.objects.filter(state=DeliveryState.PENDING).filter(
        Q(next_attempt_at__lt=now - grace) | Q(attempts=0, created_at__lt=now - grace)
    )
    ids = list(overdue.values_list("pk", flat=True)[:500])
    for delivery in ids:
        deliver_webhook.delay(delivery)
    return len(ids)


@shared_task(name="monitoring.deliver_webhook", bind=True, ignore_result=True, acks_late=True)
def deliver_webhook(self, delivery_id: int) -> None:
    """One attempt at a webhook delivery; a failed one is tried again later with backoff."""
    delivery = WebhookDelivery.objects.select_related("webhook").filter(pk=delivery_id).first()
    if delivery is None or delivery.state != DeliveryState.PENDING:
        return
    if not delivery.webhook.active:
        WebhookDelivery.objects.filter(pk=delivery_id).update(
            state=DeliveryState.FAILED, error="The webhook was turned off.", next_attempt_at=None
        )
        return
    if not notify.attempt(delivery) and delivery.state == DeliveryState.PENDING:
        self.apply_async((delivery_id,), countdown=notify.retry_delay(delivery.attempts))


@shared_task(name="monitoring.send_notification", ignore_result=True, acks_late=True)
def send_notification(notification_id: int) -> None:
    """Send a notification's emails and queue its webhook deliveries (once, however often run)."""
    notify.notification_send(notification_id)


@shared_task(name="monitoring.notify_expiring_tokens", ignore_result=True)
def notify_expiring_tokens() -> int:
    """Tell the owners of tokens that expire within TOKEN_NOTICE_DAYS, once per token; how many
    were told now."""
    now = timezone.now()
    expiring = list(
        ApiToken.objects.filter(
            revoked_at=None,
            expires_at__gt=now,
            expires_at__lte=now + dt.timedelta(days=TOKEN_NOTICE_DAYS),
            user__is_active=True,
        ).select_related("user", "created_by")
    )
    keys = [receivers.token_key(token) for token in expiring]
    told = set(Notification.objects.filter(key__in=keys).values_list("key", flat=True))
    count = 0
    for token in expiring:
        if receivers.token_key(token) in told:
            continue
        with transaction.atomic():
            if receivers.token_expiring(token) is not None:
                count += 1
    return count
