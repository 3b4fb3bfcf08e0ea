"""Alert rules at work: each rule's metric over its window, its state, and the people and
systems told when it fires or clears (an email to the owning team, signed webhooks).

Webhook deliveries carry these headers; a receiver checks the signature over
`{timestamp}.{body}` with the secret it was shown once, and may refuse old timestamps:

    X-Portal-Event: alert.fired | alert.cleared
    X-Portal-Delivery: <delivery id>
    X-Portal-Timestamp: <unix seconds>
    X-Portal-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode

from deployments import selectors as deployment_selectors
from gateway import contract
from monitoring import drift
from monitoring.models import (
    DRIFT_METRICS,
    QUALITY_METRICS,
    AlertEvent,
    AlertRule,
    AlertState,
    DeliveryState,
    Metric,
    Webhook,
    WebhookDelivery,
)
from monitoring.quality import live_quality
from monitoring.store import PredictionStore
from registry.models import ModelVersion

log = logging.getLogger(__name__)

USER_AGENT = "Portal-Webhook/1"


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
    """A pending delivery per active webhook of the service (the caller sends them)."""
    body = json.dumps(payload(event), separators=(",", ":"))
    for hook in Webhook.objects.filter(service=event.service, active=True):
        WebhookDelivery.objects.create(webhook=hook, event=event, body=body)


def email(event: AlertEvent) -> int:
    """Email the owning team's members who have an address; how many it went to."""
    team = event.service.team
    recipients = sorted(
        {m.user.email for m in team.memberships.select_related("user") if m.user.email and m.user.is_active}
    )
    if not recipients:
        return 0
    verb = "FIRING" if event.state == "fired" else "cleared"
    what = Metric(event.rule.metric).label if event.rule else "alert"
    subject = f"[Portal] {verb}: {event.service.name} ({event.environment.name}) {what}"
    rule = f"Rule: {event.rule.condition}\n" if event.rule else ""
    body = f"{event.message}\n\n{rule}Team: {team.name}\n\n{page_url(event)}\n"
    try:
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, recipients)
    except Exception:
        log.exception("could not email alert %s to team %s", event.pk, team.name)
        return 0
    AlertEvent.objects.filter(pk=event.pk).update(emailed=len(recipients))
    return len(recipients)


# ---------------------------------------------------------------- webhooks


def address_problem(url: str) -> str | None:
    """Why the portal will not send to `url`, or None. Webhooks leave from inside the network:
    an address on this machine, a link-local one (cloud metadata), multicast or reserved is
    refused, and so are private networks unless WEBHOOK_ALLOW_PRIVATE_NETWORKS is on. Hosts in
    WEBHOOK_ALLOWED_HOSTS are exempt. Checked when a webhook is added and before every send."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "The webhook URL must be an http:// or https:// address with a host."
    if parts.username or parts.password:
        return "The webhook URL must not carry a user name or password: put a secret in its path or query."
    host = parts.hostname
    if host in settings.WEBHOOK_ALLOWED_HOSTS:
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = {info[4][0] for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)}
    except (OSError, ValueError) as exc:
        return f"The webhook host {host} cannot be resolved ({exc})."
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
            return f"The webhook host {host} is {ip}, an address the portal does not send to."
        if ip.is_private and not settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS:
            return (
                f"The webhook host {host} is {ip}, on a private network: an admin may allow those "
                "(WEBHOOK_ALLOW_PRIVATE_NETWORKS) or this host (WEBHOOK_ALLOWED_HOSTS)."
            )
    return None


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A webhook answer that redirects is a failed delivery, not a new address to send to."""

    def redirect_request(self, *args, **kwargs):
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def signature(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def attempt(delivery: WebhookDelivery) -> bool:
    """Send a delivery once and record how it went; whether it arrived (a 2xx answer)."""
    body = delivery.body.encode()
    timestamp = str(int(time.time()))
    event_type = json.loads(delivery.body).get("type", "alert")
    request = urllib.request.Request(  # noqa: S310 - http(s) URLs only (address_problem)
        delivery.webhook.url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Portal-Event": event_type,
            "X-Portal-Delivery": str(delivery.pk),
            "X-Portal-Timestamp": timestamp,
            "X-Portal-Signature": signature(delivery.webhook.secret, timestamp, body),
        },
    )
    status, error = None, ""
    if problem := address_problem(delivery.webhook.url):  # checked again: DNS may have changed
        error = problem
    else:
        try:
            with _OPENER.open(request, timeout=settings.WEBHOOK_TIMEOUT_SECONDS) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status, error = exc.code, f"HTTP {exc.code} {exc.reason}"
        except Exception as exc:  # noqa: BLE001 - refused, reset, a broken answer: a failed attempt
            error = str(getattr(exc, "reason", exc)) or type(exc).__name__
    delivered = status is not None and 200 <= status < 300
    delivery.attempts += 1
    delivery.response_status = status
    delivery.error = "" if delivered else error[:300]
    delivery.last_attempt_at = timezone.now()
    if delivered:
        delivery.state, delivery.next_attempt_at = DeliveryState.DELIVERED, None
    elif delivery.attempts >= settings.WEBHOOK_MAX_ATTEMPTS:
        delivery.state, delivery.next_attempt_at = DeliveryState.FAILED, None
    else:
        delivery.next_attempt_at = delivery.last_attempt_at + dt.timedelta(seconds=retry_delay(delivery.attempts))
    delivery.save()
    return delivered


def retry_delay(attempts: int) -> float:
    return settings.WEBHOOK_RETRY_SECONDS * 2 ** (attempts - 1)
