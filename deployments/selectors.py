"""Reads for deployments; every one applies the caller's object permissions."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from django.db.models import Prefetch, QuerySet
from guardian.shortcuts import get_objects_for_user

from accounts.models import User
from core.errors import NotFound
from deployments.models import (
    Deployment,
    DeploymentEvent,
    Deprecation,
    Environment,
    Grant,
    Instance,
    Service,
    Status,
)
from deployments.publish import client
from deployments.runtime import BackendUnavailable, get_backend
from gateway import contract


def environment_list() -> QuerySet[Environment]:
    return Environment.objects.all()


def environment_get(*, name: str) -> Environment:
    environment = Environment.objects.filter(name=name).first()
    if environment is None:
        names = ", ".join(Environment.objects.values_list("name", flat=True))
        raise NotFound(f"No environment named '{name}'. Environments: {names}.")
    return environment


def service_list(*, user: User, search: str = "", team: str = "") -> QuerySet[Service]:
    services = get_objects_for_user(user, "deployments.view_service", klass=Service, accept_global_perms=False)
    if search:
        services = services.filter(name__icontains=search)
    if team:
        services = services.filter(team__name=team)
    return services.select_related("team", "model").order_by("name")


def service_get(*, user: User, name: str) -> Service:
    service = service_list(user=user).filter(name=name).first()
    if service is None:
        raise NotFound(f"No service named '{name}' that you can see.")
    return service


def deployment_list(*, user: User, service: Service | None = None) -> QuerySet[Deployment]:
    deployments = Deployment.objects.select_related(
        "service__team", "version", "environment", "requested_by", "decided_by"
    )
    if service is not None:
        return deployments.filter(service=service)
    visible = service_list(user=user)
    return deployments.filter(service__in=visible)


def deployment_get(*, user: User, deployment_id: int) -> Deployment:
    """A deployment the user may see: its service's team, or any approver (who must judge it)."""
    deployment = (
        Deployment.objects.select_related(
            "service__team", "service__model", "version__artifact", "environment", "requested_by", "decided_by"
        )
        .filter(pk=deployment_id)
        .first()
    )
    if deployment is None or not (user.is_approver or user.has_perm("deployments.view_service", deployment.service)):
        raise NotFound(f"No deployment #{deployment_id} that you can see.")
    return deployment


def deployment_events(*, deployment: Deployment, after: int = 0) -> QuerySet[DeploymentEvent]:
    return deployment.events.filter(pk__gt=after).select_related("actor").order_by("created_at", "id")


def approval_queue(*, user: User) -> QuerySet[Deployment]:
    """What waits for an approver; empty for everyone else."""
    if not user.is_approver:
        return Deployment.objects.none()
    return (
        Deployment.objects.filter(status=Status.PENDING_APPROVAL)
        .select_related("service__team", "version", "environment", "requested_by")
        .order_by("created_at")
    )


def live_by_route(*, service: Service) -> list[Deployment]:
    return list(
        Deployment.objects.filter(service=service, status=Status.LIVE)
        .select_related("version", "environment")
        .prefetch_related(Prefetch("instances", queryset=Instance.objects.order_by("name")))
        .order_by("environment__order", "-major")
    )


def grant_list(*, service: Service) -> QuerySet[Grant]:
    return Grant.objects.filter(service=service).select_related("user", "team", "created_by")


def grant_get(*, service: Service, grant_id: int) -> Grant:
    grant = grant_list(service=service).filter(pk=grant_id).first()
    if grant is None:
        raise NotFound(f"Service '{service.name}' has no grant #{grant_id}.")
    return grant


# ---------------------------------------------------------------- usage metrics (from the gateway)


@dataclass
class UsageMinute:
    minute: int  # epoch seconds
    requests: int = 0
    errors: int = 0  # 5xx: the service failed
    rejected: int = 0  # 4xx: the caller's request was refused
    buckets: list[int] = field(default_factory=list)

    def percentile(self, q: float) -> float | None:
        total = sum(self.buckets)
        if not total:
            return None
        rank, seen = q * total, 0
        for index, count in enumerate(self.buckets):
            seen += count
            if seen >= rank:
                buckets = contract.BUCKETS_MS
                return float(buckets[index]) if index < len(buckets) else float(buckets[-1]) * 2
        return None


def service_usage(*, service: Service, minutes: int = 60, environment: str | None = None) -> list[UsageMinute]:
    """Requests, errors and latency per minute for the last hour, as the gateway recorded them."""
    now = int(time.time() // 60) * 60
    starts = [now - 60 * i for i in range(minutes - 1, -1, -1)]
    try:
        with client().pipeline(transaction=False) as pipe:
            for start in starts:
                pipe.hgetall(contract.minute_key(start))
            rows = pipe.execute()
    except Exception:  # noqa: BLE001 - charts are best effort when Redis is away
        rows = [{} for _ in starts]
    usage = []
    for start, row in zip(starts, rows, strict=True):
        minute = UsageMinute(minute=start, buckets=[0] * (len(contract.BUCKETS_MS) + 1))
        for raw_field, raw_value in row.items():
            series, kind = contract.parse_metric_field(raw_field)
            if series.service != service.name or (environment and series.environment != environment):
                continue
            value = int(raw_value)
            if kind == contract.REQUESTS:
                minute.requests += value
            elif kind == contract.SERVER_ERRORS:
                minute.errors += value
            elif kind == contract.CLIENT_ERRORS:
                minute.rejected += value
            elif kind.startswith(contract.BUCKET):
                minute.buckets[int(kind[len(contract.BUCKET) :])] += value
        usage.append(minute)
    return usage


def usage_json(usage: list[UsageMinute]) -> str:
    return json.dumps([{"minute": u.minute, "requests": u.requests, "errors": u.errors} for u in usage])


def deployment_logs(*, deployment: Deployment, tail: int = 100) -> list[tuple[Instance, str]]:
    """Each instance of a deployment (the caller could see it) with its last lines of output."""
    out = []
    for instance in deployment.instances.order_by("name"):
        try:
            text = get_backend(instance.backend).logs(instance.name, tail=tail)
        except BackendUnavailable:
            text = ""
        out.append((instance, text))
    return out


def deprecation_list(*, service: Service) -> QuerySet[Deprecation]:
    """The deprecated majors of a service the caller could see."""
    return Deprecation.objects.filter(service=service).select_related("created_by").order_by("major")
