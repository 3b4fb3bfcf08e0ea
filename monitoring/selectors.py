"""Reads of the prediction log, with the same object permissions as the service they belong to."""

from __future__ import annotations

import datetime as dt
from typing import Any

from accounts.models import User
from core.errors import InvalidInput, NotFound
from deployments import selectors as deployment_selectors
from deployments.models import Service
from monitoring.quality import VersionQuality, live_quality
from monitoring.tasks import store
from registry.models import ModelVersion

MAX_DAYS = 90

COLUMNS = ("id", "ts", "version", "status", "latency_ms", "instances", "inputs", "outputs")
MAX_LIMIT = 500


def predictions_recent(
    *, user: User, service: str, environment: str, limit: int = 50, before: dt.datetime | None = None
) -> list[dict[str, Any]]:
    """The latest logged predictions of a service in an environment (newest first), for
    those who may see the service; NotFound for everyone else."""
    found = deployment_selectors.service_get(user=user, name=service)
    deployment_selectors.environment_get(name=environment)
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
    deployment_selectors.environment_get(name=environment)
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
            quality.registered = {k: v for k, v in versions[name].metrics.items() if isinstance(v, int | float)}

    def newest_first(quality: VersionQuality) -> tuple[int, int, int]:
        v = versions.get(quality.version)
        return (-v.major, -v.minor, -v.patch) if v else (0, 0, 0)

    return sorted(result.values(), key=newest_first)
