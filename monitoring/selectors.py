"""Reads of the prediction log, with the same object permissions as the service they belong to."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.db.models import QuerySet

from accounts.models import User
from core.errors import InvalidInput, NotAllowed, NotFound
from deployments import selectors as deployment_selectors
from deployments import strategies
from deployments.models import Environment, Service
from monitoring import notify
from monitoring.models import AlertEvent, AlertRule, DriftScore, DriftThresholds, Webhook, WebhookDelivery
from monitoring.quality import VersionQuality, bucket_sql, live_quality, quality_overview
from monitoring.tasks import store
from registry.models import ModelVersion

MAX_DAYS = 90

COLUMNS = ("id", "ts", "version", "status", "latency_ms", "instances", "inputs", "outputs")
MAX_LIMIT = 500


def environment_named(name: str) -> Environment:
    """The environment a query names: one that exists, or 400 (a bad parameter, not a missing page)."""
    try:
        return deployment_selectors.environment_get(name=name)
    except NotFound as exc:
        raise InvalidInput(exc.message, field="environment") from None


def predictions_recent(
    *, user: User, service: str, environment: str, limit: int = 50, before: dt.datetime | None = None
) -> list[dict[str, Any]]:
    """The latest logged predictions of a service in an environment (newest first), for
    those who may see the service; NotFound for everyone else."""
    found = deployment_selectors.service_get(user=user, name=service)
    environment_named(environment)
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}.", field="limit")
    where, params = "", []
    if before is not None:
        where, params = "WHERE ts < ?", [before]
    log = store()
    # Ids start with their time, so the latest are in the latest days: look back one day, then
    # a week, then everything, and read whole rows only for the ids found.
    today = dt.datetime.now(dt.UTC).date()
    rows = None
    for since in (today - dt.timedelta(days=1), today - dt.timedelta(days=7), None):
        ids = log.query(
            f"SELECT DISTINCT id FROM predictions {where} ORDER BY id DESC LIMIT ?",  # noqa: S608 - fixed text
            service=found.name,
            environment=environment,
            params=[*params, limit],
            since=since if before is None else None,
        )
        if ids is not None and (len(ids) >= limit or since is None or before is not None):
            rows = log.query(
                f"SELECT DISTINCT ON (id) {', '.join(COLUMNS)} FROM predictions "  # noqa: S608 - fixed columns
                "WHERE id IN (SELECT unnest(?)) ORDER BY id DESC",
                service=found.name,
                environment=environment,
                params=[[i for (i,) in ids]],
                since=since if before is None else None,
            )
            break
    return [dict(zip(COLUMNS, row, strict=True)) for row in rows or []]


def may_send_feedback(user: User, service: Service) -> bool:
    """Those granted on the service (its callers) and the team that may deploy it."""
    return user.has_perm("deployments.invoke_service", service) or user.has_perm("deployments.deploy_service", service)


def feedback_service_get(*, user: User, name: str) -> Service:
    """The service ground truth is sent for: one the user may see, or call (a consumer)."""
    service = Service.objects.filter(name=name).select_related("team").first()
    if service is None or not (user.has_perm("deployments.view_service", service) or may_send_feedback(user, service)):
        raise NotFound(f"No service named '{name}' that you can see.")
    return service


def quality_by_version(*, user: User, service: str, environment: str, days: int = 7) -> list[VersionQuality]:
    """Each version's live quality over the last `days` in an environment, beside the metrics
    recorded at registration, newest version first; only for those who may see the service."""
    found = deployment_selectors.service_get(user=user, name=service)
    environment_named(environment)
    if not 1 <= days <= MAX_DAYS:
        raise InvalidInput(f"days must be between 1 and {MAX_DAYS}.", field="days")
    versions = {v.version: v for v in ModelVersion.objects.filter(model_id=found.model_id)}
    since = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
    result = live_quality(
        store(),
        service=found.name,
        environment=environment,
        tasks={name: v.task for name, v in versions.items()},
        since=since,
    )
    for name, quality in result.items():
        if name in versions:
            quality.registered = registered_metrics(versions[name])
    return sorted(result.values(), key=lambda q: _semver_key(versions.get(q.version)))


def versions_quality(
    *, service: str, environment: str, tasks: dict[str, str], since: float, until: float
) -> dict[str, strategies.Quality]:
    """The live quality of some versions of a service between two Unix times: what a canary
    step is judged on (deployments' quality reader, registered in MonitoringConfig.ready; the
    worker asks, so no user's permissions apply)."""
    measured = live_quality(
        store(),
        service=service,
        environment=environment,
        tasks=tasks,
        since=dt.datetime.fromtimestamp(since, dt.UTC),
        until=dt.datetime.fromtimestamp(until, dt.UTC),
    )
    return {
        version: strategies.Quality(
            labelled=quality.labelled, metrics=quality.metrics, standard_errors=quality.standard_errors
        )
        for version, quality in measured.items()
        if version in tasks
    }


# ---------------------------------------------------------------- charts


@dataclass
class Overview:
    """What the performance view charts, for one service in one environment."""

    days: int
    bucket_hours: int
    starts: list[dt.datetime]
    versions: list[str]
    volume: dict[str, list[int]]  # per version, requests logged in each bucket
    quality: list[VersionQuality]  # over the whole window, newest version first
    metric: dict[str, list[float | None]]  # per version, the headline live metric in each bucket
    metric_name: str


# The live metric shown first, per task.
HEADLINE = {"classification": "accuracy", "regression": "rmse"}
BUCKET_HOURS = {1: 1, 7: 6, 30: 24, 90: 72}


def performance_overview(*, user: User, service: str, environment: str, days: int = 7) -> Overview:
    """Volume and the live metric per version in buckets over the last `days` (hourly for a
    day, 6-hourly for a week, daily for a month), and each version's quality over the window."""
    found = deployment_selectors.service_get(user=user, name=service)
    environment_named(environment)
    if days not in BUCKET_HOURS:
        raise InvalidInput(f"days must be one of {', '.join(map(str, BUCKET_HOURS))}.", field="days")
    hours = BUCKET_HOURS[days]
    now = dt.datetime.now(dt.UTC)
    step = dt.timedelta(hours=hours)
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)  # where buckets are counted from (quality.bucket_sql)
    last = epoch + ((now - epoch) // step) * step
    starts = [last - step * i for i in range(days * 24 // hours - 1, -1, -1)]
    since = starts[0]
    log = store()
    counted = log.query(
        f"SELECT version, {bucket_sql(hours, 'ts')} AS bucket, count(DISTINCT id) "  # noqa: S608 - a number
        "FROM predictions WHERE ts >= ? GROUP BY ALL",
        service=found.name,
        environment=environment,
        params=[since],
        since=since.date(),
    )
    volume: dict[str, dict[dt.datetime, int]] = {}
    for version, start, count in counted or []:
        volume.setdefault(version, {})[start.astimezone(dt.UTC)] = count
    versions = {v.version: v for v in ModelVersion.objects.filter(model_id=found.model_id)}
    overall, series = quality_overview(
        log,
        service=found.name,
        environment=environment,
        tasks={name: v.task for name, v in versions.items()},
        since=since,
        bucket_hours=hours,
    )
    for name, quality in overall.items():
        if name in versions:
            quality.registered = registered_metrics(versions[name])
    tasks = {q.task for q in overall.values() if q.task}
    metric_name = HEADLINE.get(tasks.pop(), "") if len(tasks) == 1 else ""
    metric: dict[str, list[float | None]] = {}
    for version, by_start in series.items():
        measured = {start.astimezone(dt.UTC): quality for start, quality in by_start.items()}
        values = [measured[s].metrics.get(metric_name) if s in measured else None for s in starts]
        if any(v is not None for v in values):
            metric[version] = values
    names = sorted(set(volume) | set(overall), key=lambda n: _semver_key(versions.get(n)))
    return Overview(
        days=days,
        bucket_hours=hours,
        starts=starts,
        versions=names,
        volume={name: [volume.get(name, {}).get(s, 0) for s in starts] for name in names},
        quality=sorted(overall.values(), key=lambda q: _semver_key(versions.get(q.version))),
        metric=metric,
        metric_name=metric_name,
    )


def registered_metrics(version: ModelVersion) -> dict[str, float]:
    """The numbers among the metrics recorded at registration (what live ones compare with)."""
    return {k: v for k, v in version.metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _semver_key(version: ModelVersion | None) -> tuple[int, int, int]:
    return (-version.major, -version.minor, -version.patch) if version else (0, 0, 0)


@dataclass
class HeatMap:
    hours: list[dt.datetime]
    version: str
    versions: list[str]
    rows: list[tuple[str, list[DriftScore | None]]]  # per feature, its score in each hour
    thresholds: DriftThresholds
    reference_rows: int


def drift_heatmap(*, user: User, service: str, environment: str, version: str = "", hours: int = 24) -> HeatMap | None:
    """Each feature's drift per hour over the last `hours`, for one version (by default the
    one with the latest scores); None when nothing was scored."""
    found = deployment_selectors.service_get(user=user, name=service)
    env = environment_named(environment)
    if not 1 <= hours <= 24 * MAX_DAYS:
        raise InvalidInput(f"hours must be between 1 and {24 * MAX_DAYS}.", field="hours")
    now = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    starts = [now - dt.timedelta(hours=i) for i in range(hours - 1, -1, -1)]
    scores = DriftScore.objects.filter(service=found, environment=env, hour__gte=starts[0])
    versions = list(scores.order_by("-hour", "version").values_list("version", flat=True).distinct())
    versions = list(dict.fromkeys(versions))
    if not versions:
        return None
    chosen = version if version in versions else versions[0]
    by_feature: dict[str, dict[dt.datetime, DriftScore]] = {}
    reference_rows = 0
    for score in scores.filter(version=chosen).order_by("feature", "hour"):
        by_feature.setdefault(score.feature, {})[score.hour.astimezone(dt.UTC)] = score
        reference_rows = score.reference_rows
    return HeatMap(
        hours=starts,
        version=chosen,
        versions=versions,
        rows=[(feature, [cells.get(s) for s in starts]) for feature, cells in by_feature.items()],
        thresholds=DriftThresholds.effective(found),
        reference_rows=reference_rows,
    )


def drift_scores(
    *, user: User, service: str, environment: str, hours: int = 24, version: str = "", feature: str = ""
) -> QuerySet[DriftScore]:
    """Each feature's drift per version and hour over the last `hours` (one version's or one
    feature's, when given), oldest first."""
    found = deployment_selectors.service_get(user=user, name=service)
    env = environment_named(environment)
    if not 1 <= hours <= 24 * MAX_DAYS:
        raise InvalidInput(f"hours must be between 1 and {24 * MAX_DAYS}.", field="hours")
    since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours)
    scores = DriftScore.objects.filter(service=found, environment=env, hour__gte=since)
    if version:
        scores = scores.filter(version=version)
    if feature:
        scores = scores.filter(feature=feature)
    return scores.order_by("hour", "version", "feature")


# ---------------------------------------------------------------- alerts


def alert_rules(*, user: User, service: str, environment: str | None = None) -> QuerySet[AlertRule]:
    found = deployment_selectors.service_get(user=user, name=service)
    rules = AlertRule.objects.filter(service=found).select_related("service", "environment")
    if environment:
        rules = rules.filter(environment=environment_named(environment))
    return rules


def alert_rule_get(*, user: User, rule_id: int) -> AlertRule:
    rule = AlertRule.objects.select_related("service__team", "environment").filter(pk=rule_id).first()
    if rule is None or not user.has_perm("deployments.view_service", rule.service):
        raise NotFound(f"No alert rule #{rule_id} that you can see.")
    return rule


def alert_events(*, user: User, service: str, environment: str | None = None) -> QuerySet[AlertEvent]:
    found = deployment_selectors.service_get(user=user, name=service)
    events = AlertEvent.objects.filter(service=found).select_related("rule", "environment", "service")
    if environment:
        events = events.filter(environment=environment_named(environment))
    return events


def alert_events_visible(*, user: User, days: int = 7) -> QuerySet[AlertEvent]:
    """Alerts of the services the user may see, for the dashboard."""
    since = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
    visible = deployment_selectors.service_list(user=user)
    return AlertEvent.objects.filter(service__in=visible, created_at__gte=since).select_related(
        "service", "environment", "rule"
    )


def webhooks(*, user: User, service: Service) -> QuerySet[Webhook]:
    """A service's webhooks: only for those who may change the service (URLs can carry secrets).
    `service` is one the user may see (its selector said so): others are told they may not."""
    if not user.has_perm("deployments.change_service", service):
        raise NotAllowed(
            f"Only owners and maintainers of team '{service.team.name}' see the webhooks of '{service.name}'."
        )
    return Webhook.objects.filter(service=service)


def webhook_get(*, user: User, webhook_id: int) -> Webhook:
    hook = Webhook.objects.select_related("service__team").filter(pk=webhook_id).first()
    if hook is None or not user.has_perm("deployments.change_service", hook.service):
        raise NotFound(f"No webhook #{webhook_id} that you can see.")
    return hook


def webhook_deliveries(*, webhook: Webhook) -> QuerySet[WebhookDelivery]:
    return webhook.deliveries.select_related("event", "notification")


@dataclass
class LiveMetrics:
    """One version's live metrics through one service in one environment."""

    service: str
    environment: str
    version: str
    labelled: int
    metrics: dict[str, float]


def model_live_metrics(*, user: User, model_id: int, days: int = 7) -> list[LiveMetrics]:
    """Live quality of a model's versions over the last `days`, through each of its services
    the user may see, in each environment that has ground truth."""
    since = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
    tasks = dict(ModelVersion.objects.filter(model_id=model_id).values_list("version", "task"))
    log = store()
    found = []
    for service in deployment_selectors.service_list(user=user).filter(model_id=model_id):
        for environment in deployment_selectors.environment_list():
            measured = live_quality(log, service=service.name, environment=environment.name, tasks=tasks, since=since)
            found += [
                LiveMetrics(service.name, environment.name, q.version, q.labelled, q.metrics)
                for q in measured.values()
                if q.metrics
            ]
    return found


def firing_rules(*, user: User, service: Service | None = None) -> QuerySet[AlertRule]:
    """Alert rules firing now on the services the user may see (or on one of them)."""
    visible = deployment_selectors.service_list(user=user)
    rules = AlertRule.objects.filter(service__in=visible, enabled=True, state="firing")
    if service is not None:
        rules = rules.filter(service=service)
    return rules.select_related("service", "environment").order_by("-changed_at")


def notification_preferences(*, user: User) -> dict[str, bool]:
    """Whether `user` gets each event type's email."""
    return notify.email_choices(user)
