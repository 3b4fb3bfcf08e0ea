"""Alert rules at work: each rule's metric over its window, its state, and the people and
systems told when it fires or clears (an email to the owning team's members who want it,
signed webhooks subscribed to alert.fired or alert.cleared, sent by monitoring.notify).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode

from deployments import selectors as deployment_selectors
from gateway import contract
from monitoring import drift, notify
from monitoring.models import (
    DRIFT_METRICS,
    QUALITY_METRICS,
    AlertEvent,
    AlertRule,
    AlertState,
    Metric,
)
from monitoring.quality import live_quality
from monitoring.store import PredictionStore
from registry.models import ModelVersion

log = logging.getLogger(__name__)


@dataclass
class Reading:
    value: float | None  # None: not enough data in the window
    samples: int
    detail: str = ""


def read(rule: AlertRule, store: PredictionStore, now: dt.datetime) -> Reading:
    """What the rule's metric is over its window ending `now` (the worst version's, or the
    worst feature's, when there are several)."""
    since = now - dt.timedelta(minutes=rule.window_minutes)
    service, environment = rule.service, rule.environment
    if rule.metric in (Metric.ERROR_RATE, Metric.LATENCY):
        return _usage(
            rule,
            deployment_selectors.service_usage(
                service=service, minutes=rule.window_minutes, environment=environment.name
            ),
        )
    versions = {v.version: v for v in ModelVersion.objects.filter(model_id=service.model_id)}
    if rule.metric in QUALITY_METRICS:
        qualities = live_quality(
            store,
            service=service.name,
            environment=environment.name,
            tasks={name: v.task for name, v in versions.items()},
            since=since,
            until=now,
        )
        candidates = [
            Reading(q.metrics[rule.metric], q.labelled, f"version {q.version}, {q.labelled} labelled predictions")
            for q in qualities.values()
            if rule.metric in q.metrics and q.labelled >= rule.min_samples
        ]
        return _worst(rule, candidates, sum(q.labelled for q in qualities.values()))
    if rule.metric in DRIFT_METRICS:
        scores = drift.score(
            store,
            service=service.name,
            environment=environment.name,
            profiles=drift.reference_profiles(versions),
            since=since,
            until=now,
        )
        candidates = []
        samples = 0
        for version, features in scores.items():
            for feature in features:
                samples = max(samples, feature.count)
                if feature.count < rule.min_samples:
                    continue
                value = {
                    Metric.DRIFT: feature.psi,
                    Metric.MISSING: feature.missing_rate,
                    Metric.OUT_OF_RANGE: feature.out_of_range_rate,
                }[Metric(rule.metric)]
                if value is not None:
                    detail = f"feature {feature.feature} of version {version}, {feature.count} instances"
                    candidates.append(Reading(value, feature.count, detail))
        return _worst(rule, candidates, samples)
    raise ValueError(f"unknown metric {rule.metric!r}")


def _usage(rule: AlertRule, minutes: list) -> Reading:
    requests = sum(m.requests for m in minutes)
    if requests < rule.min_samples or not requests:
        return Reading(None, requests)
    if rule.metric == Metric.ERROR_RATE:
        errors = sum(m.errors for m in minutes)
        return Reading(errors / requests, requests, f"{errors} of {requests} requests failed")
    merged = type(minutes[0])(minute=0, buckets=[sum(b) for b in zip(*(m.buckets for m in minutes), strict=True)])
    p95 = merged.percentile(0.95)
    bound = f"≤ {p95:g} ms" if p95 is not None and p95 <= contract.BUCKETS_MS[-1] else "over the largest bucket"
    return Reading(p95, requests, f"{requests} requests, p95 {bound}")


def _worst(rule: AlertRule, candidates: list[Reading], samples: int) -> Reading:
    if not candidates:
        return Reading(None, samples)
    return min(candidates, key=lambda r: r.value) if rule.fires_below else max(candidates, key=lambda r: r.value)


# ---------------------------------------------------------------- evaluation


def evaluate(rule: AlertRule, store: PredictionStore, now: dt.datetime | None = None) -> AlertEvent | None:
    """Read the rule's metric and move its state; the event made if it fired or cleared, with
    a pending delivery for each of the service's webhooks (which the caller sends, with the
    email, once this has committed).

    A rule without enough data keeps firing if it was firing (no news is not good news), and
    goes from OK to "not enough data" otherwise.
    """
    now = now or timezone.now()
    reading = read(rule, store, now)
    with transaction.atomic():
        locked = AlertRule.objects.select_for_update().select_related("service", "environment").filter(pk=rule.pk)
        locked = locked.first()
        if locked is None or not locked.enabled:  # deleted or turned off meanwhile
            return None
        before = locked.state
        if reading.value is None:  # no news is not good news: a firing rule keeps firing
            state = AlertState.FIRING if before == AlertState.FIRING else AlertState.NO_DATA
        else:
            state = AlertState.FIRING if locked.breached(reading.value) else AlertState.OK
        locked.state, locked.evaluated_at = state, now
        if reading.value is not None:
            locked.value, locked.detail = reading.value, reading.detail[:300]
        if state != before:
            locked.changed_at = now
        locked.save(update_fields=["state", "value", "detail", "evaluated_at", "changed_at"])
        event = None
        if state == AlertState.FIRING and before != AlertState.FIRING:
            event = _event(locked, "fired", reading)
        elif before == AlertState.FIRING and state == AlertState.OK:
            event = _event(locked, "cleared", reading)
        if event is not None:
            _queue_webhooks(event)
    return event


def _event(rule: AlertRule, state: str, reading: Reading) -> AlertEvent:
    where = f"{rule.service.name} in {rule.environment.name}"
    if state == "fired":
        message = f"{where}: {Metric(rule.metric).label} is {reading.value:.4g}, the rule fires " + (
            f"below {rule.threshold:g}" if rule.fires_below else f"above {rule.threshold:g}"
        )
    else:
        message = f"{where}: {Metric(rule.metric).label} is back to {reading.value:.4g}, within {rule.threshold:g}"
    message += f" ({reading.detail}, last {rule.window_minutes} min)." if reading.detail else "."
    return AlertEvent.objects.create(
        rule=rule,
        service=rule.service,
        environment=rule.environment,
        state=state,
        value=reading.value,
        message=message[:500],
    )


def stand_down(rule: AlertRule, why: str) -> AlertEvent | None:
    """A firing rule that is turned off or deleted clears, so whoever was told it fired (an
    incident opened from its webhook) is told it no longer stands. The event and its pending
    deliveries, or None if the rule was not firing."""
    if rule.state != AlertState.FIRING:
        return None
    where = f"{rule.service.name} in {rule.environment.name}"
    event = AlertEvent.objects.create(
        rule=rule,
        service=rule.service,
        environment=rule.environment,
        state="cleared",
        value=rule.value,
        message=f"{where}: {rule.condition} is no longer watched: the rule was {why}."[:500],
    )
    _queue_webhooks(event)
    return event


def page_url(event: AlertEvent) -> str:
    path = reverse("service_performance", args=[event.service.name])
    return f"{settings.PORTAL_URL}{path}?{urlencode({'environment': event.environment.name})}#alerts"


def payload(event: AlertEvent) -> dict:
    rule = event.rule
    if rule is None:
        return {"type": f"alert.{event.state}", "event_id": event.pk, "message": event.message}
    return {
        "type": f"alert.{event.state}",
        "event_id": event.pk,
        "service": event.service.name,
        "environment": event.environment.name,
        "team": event.service.team.name,
        "rule": {
            "id": rule.pk,
            "metric": rule.metric,
            "threshold": rule.threshold,
            "fires": "below" if rule.fires_below else "above",
            "window_minutes": rule.window_minutes,
        },
        "value": event.value,
        "message": event.message,
        "at": event.created_at.isoformat(),
        "url": page_url(event),
    }


def _queue_webhooks(event: AlertEvent) -> None:
    """A pending delivery per active webhook of the service subscribed to this alert event
    (the caller sends them)."""
    notify.deliveries_create(
        event_type=f"alert.{event.state}", service_ids=[event.service_id], payload=payload(event), event=event
    )


def email(event: AlertEvent) -> int:
    """Email the owning team's members who have an address and want this alert event; how
    many it went to."""
    team = event.service.team
    members = [m.user for m in team.memberships.select_related("user")]
    verb = "FIRING" if event.state == "fired" else "cleared"
    what = Metric(event.rule.metric).label if event.rule else "alert"
    subject = f"[Portal] {verb}: {event.service.name} ({event.environment.name}) {what}"
    rule = f"Rule: {event.rule.condition}\n" if event.rule else ""
    body = f"{event.message}\n\n{rule}Team: {team.name}\n\n{page_url(event)}\n"
    emailed = notify.email_send(
        event_type=f"alert.{event.state}", subject=subject, body=body, users=members, what=f"alert {event.pk}"
    )
    if emailed:
        AlertEvent.objects.filter(pk=event.pk).update(emailed=emailed)
    return emailed
