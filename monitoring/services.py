"""Writes of monitoring: ground truth for logged predictions, drift thresholds, alert rules,
webhooks, and each person's choice of notification emails."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import transaction

from accounts.models import AuditAction, User
from accounts.services import audit_event_record
from core.errors import Conflict, InvalidInput, NotAllowed, PayloadTooLarge
from deployments.models import Environment, Service
from gateway import contract
from monitoring import alerts, notify
from monitoring.models import AlertRule, AlertState, DriftThresholds, EventType, Metric, NotificationPreference, Webhook
from monitoring.selectors import may_send_feedback
from monitoring.tasks import alert_notify, store

FEEDBACK_MAX_ITEMS = 10_000
FEEDBACK_FILE_MAX_BYTES = 20 * 1024 * 1024
ACTUAL_MAX_BYTES = 64 * 1024
# An id this recent may still be on its way from the gateway to the log: kept, reported pending.
PENDING_SECONDS = 120
PREDICTION_ID = re.compile(r"[0-9a-f]{21}")


@dataclass
class FeedbackResult:
    accepted: int = 0
    pending: list[str] = field(default_factory=list)  # not in the log yet, but recent: kept
    unknown: list[str] = field(default_factory=list)  # not predictions of this service: not kept


def feedback_record(*, actor: User, service: Service, items: Any) -> FeedbackResult:
    """Store the actual outcomes (`[{"prediction_id", "actual"}]`) of logged predictions of
    `service`. Sending an id again replaces what was sent before. Ids that are not the
    service's predictions are reported back and not kept."""
    if not may_send_feedback(actor, service):
        raise NotAllowed(f"'{actor.username}' may not send ground truth for '{service.name}': it needs a grant.")
    if not isinstance(items, list) or not items:
        raise InvalidInput('Send a JSON array of {"prediction_id": ..., "actual": ...} objects.')
    if len(items) > FEEDBACK_MAX_ITEMS:
        raise PayloadTooLarge(f"At most {FEEDBACK_MAX_ITEMS} outcomes per request; this one has {len(items)}.")
    actuals: dict[str, str] = {}
    for n, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != {"prediction_id", "actual"}:
            raise InvalidInput(f'Item {n} must be an object with exactly "prediction_id" and "actual".')
        prediction_id = item["prediction_id"]
        if not isinstance(prediction_id, str) or not PREDICTION_ID.fullmatch(prediction_id):
            raise InvalidInput(f"Item {n}: {prediction_id!r} is not a prediction id (21 hex digits, X-Prediction-Id).")
        if item["actual"] is None:
            raise InvalidInput(f"Item {n}: the actual outcome is missing (null).")
        try:
            actual = json.dumps(item["actual"], separators=(",", ":"), allow_nan=False)
        except ValueError:
            raise InvalidInput(f"Item {n}: the actual outcome is not JSON (NaN or Infinity).") from None
        if len(actual) > ACTUAL_MAX_BYTES:
            raise InvalidInput(f"Item {n}: the actual outcome is larger than {ACTUAL_MAX_BYTES} bytes as JSON.")
        actuals[prediction_id] = actual  # the same id twice: the last one counts
    log = store()
    known = log.known_ids(service.name, actuals)
    result = FeedbackResult()
    recent = (time.time() - PENDING_SECONDS) * 1000
    rows = []
    for prediction_id, actual in actuals.items():
        if prediction_id not in known:
            if int(prediction_id[:11], 16) < recent:
                result.unknown.append(prediction_id)
                continue
            result.pending.append(prediction_id)
        rows.append((prediction_id, actual, actor.username))
    if rows:
        log.write_feedback(service.name, rows)
    result.accepted = len(rows)
    return result


def outcomes_from_file(name: str, data: bytes) -> list[dict]:
    """Outcomes in an uploaded file: CSV (by its name; columns prediction_id and actual, an
    actual that reads as JSON is taken as that value) or JSON (an array, or JSON lines)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput("The file is not UTF-8 text.", field="file") from None
    if name.lower().endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or not {"prediction_id", "actual"} <= set(reader.fieldnames):
            raise InvalidInput("The CSV file needs a header row with prediction_id and actual.", field="file")
        outcomes = []
        for row in reader:
            try:
                actual = json.loads(row["actual"])
            except ValueError:
                actual = row["actual"]
            outcomes.append({"prediction_id": row["prediction_id"], "actual": actual})
        return outcomes
    try:
        parsed = json.loads(text)
    except ValueError:
        try:
            parsed = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError:
            raise InvalidInput("The file is neither CSV (by its name) nor JSON nor JSON lines.", field="file") from None
    return parsed if isinstance(parsed, list) else [parsed]


# ---------------------------------------------------------------- drift thresholds and alert rules

# The gateway keeps its per-minute request counts and latencies this long.
USAGE_WINDOW_MAX_MINUTES = contract.METRICS_RETENTION_SECONDS // 60
WINDOW_MAX_MINUTES = 7 * 24 * 60
RATES = {Metric.ERROR_RATE, Metric.MISSING, Metric.OUT_OF_RANGE, Metric.ACCURACY, Metric.PRECISION, Metric.RECALL}
RATES |= {Metric.F1}


def _may_change(actor: User, service: Service) -> None:
    if not actor.has_perm("deployments.change_service", service):
        raise NotAllowed(f"Only owners and maintainers of team '{service.team.name}' may change its monitoring.")


def drift_thresholds_set(*, actor: User, service: Service, **values: float) -> DriftThresholds:
    _may_change(actor, service)
    for name, value in values.items():
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise InvalidInput(f"{name} must be a number of 0 or more.", field=name)
        if name != "psi_warn" and name != "psi_alert" and value > 1:
            raise InvalidInput(f"{name} is a share: between 0 and 1.", field=name)
    thresholds = DriftThresholds.effective(service)
    for name, value in values.items():
        setattr(thresholds, name, float(value))
    if thresholds.psi_warn > thresholds.psi_alert:
        raise InvalidInput("psi_warn must not be above psi_alert.", field="psi_warn")
    thresholds.save()
    audit_event_record(
        actor=actor, action=AuditAction.MONITORING_CHANGE, target=service, team=service.team, data=values
    )
    return thresholds


def _check_rule(metric: str, threshold: float, window_minutes: int, min_samples: int) -> None:
    if metric not in Metric.values:
        raise InvalidInput(f"Unknown metric {metric!r}; use one of {', '.join(Metric.values)}.", field="metric")
    if not (isinstance(threshold, int | float) and not isinstance(threshold, bool) and math.isfinite(threshold)):
        raise InvalidInput("threshold must be a number.", field="threshold")
    if metric in RATES and not 0 <= threshold <= 1:
        raise InvalidInput(f"{metric} is a share: its threshold is between 0 and 1.", field="threshold")
    if threshold < 0:
        raise InvalidInput("threshold must not be negative.", field="threshold")
    longest = USAGE_WINDOW_MAX_MINUTES if metric in (Metric.ERROR_RATE, Metric.LATENCY) else WINDOW_MAX_MINUTES
    if not 1 <= window_minutes <= longest:
        reason = " (the gateway keeps per-minute counts for two hours)" if longest == USAGE_WINDOW_MAX_MINUTES else ""
        raise InvalidInput(f"window_minutes must be between 1 and {longest}{reason}.", field="window_minutes")
    if not 1 <= min_samples <= 1_000_000:
        raise InvalidInput("min_samples must be between 1 and 1,000,000.", field="min_samples")


def alert_rule_create(
    *,
    actor: User,
    service: Service,
    environment: Environment,
    metric: str,
    threshold: float,
    window_minutes: int = 60,
    min_samples: int = 50,
    enabled: bool = True,
) -> AlertRule:
    _may_change(actor, service)
    _check_rule(metric, threshold, window_minutes, min_samples)
    rule = AlertRule.objects.create(
        service=service,
        environment=environment,
        metric=metric,
        threshold=float(threshold),
        window_minutes=window_minutes,
        min_samples=min_samples,
        enabled=enabled,
        created_by=actor,
    )
    audit_event_record(
        actor=actor,
        action=AuditAction.ALERT_RULE_CREATE,
        target=rule,
        team=service.team,
        data={"environment": environment.name, "condition": rule.condition, "enabled": enabled},
    )
    return rule


def alert_rule_update(*, actor: User, rule: AlertRule, **changes: Any) -> AlertRule:
    _may_change(actor, rule.service)
    allowed = {"threshold", "window_minutes", "min_samples", "enabled"}
    if unknown := set(changes) - allowed:
        raise InvalidInput(f"Cannot change {', '.join(sorted(unknown))} of a rule.", field=sorted(unknown)[0])
    values = {name: changes.get(name, getattr(rule, name)) for name in allowed}
    _check_rule(rule.metric, values["threshold"], values["window_minutes"], values["min_samples"])
    with transaction.atomic():
        # Locked, and only the changed fields written: an evaluation running now keeps its result.
        rule = AlertRule.objects.select_for_update().select_related("service__team", "environment").get(pk=rule.pk)
        before = {name: getattr(rule, name) for name in changes}
        for name, value in changes.items():
            setattr(rule, name, value)
        fields = list(changes)
        cleared = None
        if changes.get("enabled") is False:
            cleared = alerts.stand_down(rule, f"turned off by {actor.username}")
            rule.state = AlertState.NO_DATA  # a rule turned off does not stay firing
            fields.append("state")
        rule.save(update_fields=fields)
    if cleared is not None:
        alert_notify(cleared)
    audit_event_record(
        actor=actor,
        action=AuditAction.ALERT_RULE_CHANGE,
        target=rule,
        team=rule.service.team,
        data={"before": before, "after": changes, "condition": rule.condition},
    )
    return rule


def alert_rule_delete(*, actor: User, rule: AlertRule) -> None:
    _may_change(actor, rule.service)
    if cleared := alerts.stand_down(rule, f"deleted by {actor.username}"):
        alert_notify(cleared)  # before the rule goes: the email names it
    audit_event_record(
        actor=actor,
        action=AuditAction.ALERT_RULE_DELETE,
        target=rule,
        team=rule.service.team,
        data={"environment": rule.environment.name, "condition": rule.condition},
    )
    rule.delete()


def _check_events(events: Any) -> list[str]:
    if not isinstance(events, list | tuple) or not events:
        raise InvalidInput(f"Choose at least one event type: {', '.join(EventType.values)}.", field="events")
    if unknown := [e for e in events if e not in EventType.values]:
        raise InvalidInput(
            f"Unknown event type {unknown[0]!r}; use any of {', '.join(EventType.values)}.", field="events"
        )
    return [e for e in EventType.values if e in events]  # in their usual order, each once


def webhook_create(*, actor: User, service: Service, url: str, events: list[str] | None = None) -> Webhook:
    """Add a webhook for a service's events (all of them unless `events` names some); its
    signing secret is on the returned object, to be shown once."""
    _may_change(actor, service)
    events = _check_events(events) if events is not None else list(EventType.values)
    url = (url or "").strip()
    try:
        URLValidator(schemes=["http", "https"])(url)
    except ValidationError:
        raise InvalidInput("The webhook URL must be an http:// or https:// address.", field="url") from None
    if len(url) > 500:
        raise InvalidInput("The webhook URL may be at most 500 characters.", field="url")
    if problem := notify.address_problem(url):
        raise InvalidInput(problem, field="url")
    if Webhook.objects.filter(service=service).count() >= 10:
        raise Conflict(f"'{service.name}' already has 10 webhooks; remove one first.")
    hook = Webhook.objects.create(service=service, url=url, events=events, created_by=actor)
    # The host only: a webhook's path or query may be its secret (chat services work that way).
    audit_event_record(
        actor=actor,
        action=AuditAction.WEBHOOK_CREATE,
        target=hook,
        team=service.team,
        data={"host": hook.host, "events": events},
    )
    return hook


def webhook_update(*, actor: User, webhook: Webhook, events: list[str]) -> Webhook:
    """Change the event types a webhook is sent (its address and secret stay)."""
    _may_change(actor, webhook.service)
    events = _check_events(events)
    before = list(webhook.events)
    if events != before:
        webhook.events = events
        webhook.save(update_fields=["events"])
        audit_event_record(
            actor=actor,
            action=AuditAction.WEBHOOK_CHANGE,
            target=webhook,
            team=webhook.service.team,
            data={"host": webhook.host, "events": [before, events]},
        )
    return webhook


def webhook_delete(*, actor: User, webhook: Webhook) -> None:
    _may_change(actor, webhook.service)
    audit_event_record(
        actor=actor,
        action=AuditAction.WEBHOOK_DELETE,
        target=webhook,
        team=webhook.service.team,
        data={"host": webhook.host},
    )
    webhook.delete()


# ---------------------------------------------------------------- notification emails


@transaction.atomic
def notification_preferences_set(*, actor: User, email: Any) -> dict[str, bool]:
    """Turn the emails of some event types on or off for `actor` (types not named keep their
    setting); every type's setting after the change."""
    if not isinstance(email, dict) or not email:
        raise InvalidInput(
            'Send {"email": {"<event type>": true|false, ...}} naming one or more event types.', field="email"
        )
    for kind, on in email.items():
        if kind not in EventType.values:
            raise InvalidInput(f"Unknown event type {kind!r}; use any of {', '.join(EventType.values)}.", field="email")
        if not isinstance(on, bool):
            raise InvalidInput(f"{kind}: say true or false.", field="email")
    for kind, on in email.items():
        NotificationPreference.objects.update_or_create(user=actor, event_type=kind, defaults={"email": on})
    return notify.email_choices(actor)
