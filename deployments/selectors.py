"""Reads for deployments; every one applies the caller's object permissions."""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.conf import settings
from django.db.models import Prefetch, Q, QuerySet
from guardian.core import ObjectPermissionChecker
from guardian.shortcuts import get_objects_for_user

from accounts.models import Membership, Role, Team, User
from core.errors import InvalidInput, NotFound
from deployments.models import (
    AccessRequest,
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

log = logging.getLogger(__name__)


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


def version_counts(*, deployment: Deployment, versions: list[str], since: float) -> dict[str, dict[str, int]]:
    """The gateway's counts of some versions of a deployment's route, summed over consumers and
    over the minutes from the one `since` falls in to now: {version: {kind: count}}, with the
    kinds of contract (requests, errors, latency buckets, shadow copies). Raises when Redis
    cannot be read (the caller decides what waiting means)."""
    now = time.time()
    first = int(since // 60) * 60
    starts = list(range(first, int(now // 60) * 60 + 1, 60))
    with client().pipeline(transaction=False) as pipe:
        for start in starts:
            pipe.hgetall(contract.minute_key(start))
        rows = pipe.execute()
    wanted = set(versions)
    counts: dict[str, dict[str, int]] = {version: {} for version in versions}
    environment, service, major = deployment.environment.name, deployment.service.name, deployment.major
    for row in rows:
        for raw_field, raw_value in row.items():
            series, kind = contract.parse_metric_field(raw_field)
            if (
                series.version not in wanted
                or series.service != service
                or series.environment != environment
                or series.major != major
            ):
                continue
            per_kind = counts[series.version]
            per_kind[kind] = per_kind.get(kind, 0) + int(raw_value)
    return counts


def shadow_examples(*, deployment: Deployment, limit: int = 20) -> list[contract.ShadowExample]:
    """The latest predictions a shadow candidate disagreed on, as the gateways kept them
    (newest first); empty when there are none or Redis cannot be read."""
    try:
        raw = client().lrange(contract.shadow_examples_key(deployment.pk), 0, limit - 1)
    except Exception:  # noqa: BLE001 - a report without examples beats no page
        return []
    examples = []
    for item in raw:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            examples.append(contract.ShadowExample.decode(item))
    return examples


@dataclass
class TrialStep:
    number: int
    percent: float
    state: str  # "done", "current" or "next"
    at: datetime | None = None  # when it passed (done) or started (current)


@dataclass
class Trial:
    """What the deployment page shows of a canary or shadow: the split, the steps, the comparison."""

    deployment: Deployment
    stable_version: str
    percent: float
    steps: list[TrialStep]
    analysis: dict
    examples: list[contract.ShadowExample]

    @property
    def shadow(self) -> bool:
        return self.deployment.strategy == "shadow"

    @property
    def stable_percent(self) -> float:
        return 100.0 if self.shadow else 100.0 - self.percent

    @property
    def example_rows(self) -> list[dict]:
        """The disagreeing examples as the page shows them: a time and each payload as JSON."""
        return [
            {
                "at": datetime.fromtimestamp(e.ts, tz=UTC),
                "instances": json.dumps(e.instances),
                "stable": json.dumps(e.stable),
                "candidate": json.dumps(e.candidate),
            }
            for e in self.examples
        ]

    @property
    def quality(self) -> dict[str, str]:
        """The live quality row of a canary's comparison: the metric's name and each side's value."""
        metric = self.analysis.get("quality_metric") or ""
        empty = "\u2013"  # an en dash, as the table's other empty cells
        shown = {
            side: quality_value(metric, (self.analysis.get(side) or {}).get("quality"), empty=empty)
            for side in ("stable", "candidate")
        }
        return {"label": metric_label(metric) if metric else "quality", **shown}

    @property
    def waiting(self) -> str:
        """Why it is not judged yet, when it is not."""
        analysis = self.analysis
        if not analysis or analysis.get("judged"):
            return ""
        what = "copies" if self.shadow else "requests"
        return (
            f"Waiting for {analysis.get('min_requests')} {what} to {self.deployment.version.version} before "
            f"judging, {analysis['candidate']['requests']} so far."
        )


def metric_label(metric: str) -> str:
    """A live quality metric as people read it: accuracy, RMSE."""
    return "accuracy" if metric == "accuracy" else metric.upper()


def quality_value(metric: str, value: float | None, *, empty: str = "-") -> str:
    """A live quality value: accuracy as a percent (87.5 %), an error as a number."""
    if value is None:
        return empty
    if metric == "accuracy":
        return f"{value * 100:.1f}".removesuffix(".0") + " %"
    return f"{value:.4g}"


def trial(*, deployment: Deployment) -> Trial | None:
    """A canary's or shadow's state for its page (None for blue/green deployments)."""
    if deployment.strategy == "blue_green":
        return None
    stable = (
        Deployment.objects.filter(
            service_id=deployment.service_id,
            environment_id=deployment.environment_id,
            major=deployment.major,
            status=Status.LIVE,
        )
        .exclude(pk=deployment.pk)
        .select_related("version")
        .first()
    )
    passed = {
        e.step: e.created_at for e in deployment.events.filter(step__startswith="step:").only("step", "created_at")
    }
    steps = []
    if deployment.strategy == "canary":
        trying = deployment.status == Status.CANARY
        for index, percent in enumerate(deployment.steps):
            at = passed.get(f"step:{index + 1}")
            if trying and index == deployment.step_index:
                steps.append(TrialStep(index + 1, float(percent), "current", deployment.step_started_at))
            elif at is not None or (deployment.status == Status.LIVE and index < len(deployment.steps) - 1):
                steps.append(TrialStep(index + 1, float(percent), "done", at))
            elif deployment.status == Status.LIVE:
                steps.append(TrialStep(index + 1, float(percent), "done", deployment.live_at))
            elif deployment.status == Status.ROLLED_BACK and index == deployment.step_index:
                steps.append(TrialStep(index + 1, float(percent), "stopped", deployment.ended_at))
            else:
                steps.append(TrialStep(index + 1, float(percent), "next"))
    return Trial(
        deployment=deployment,
        stable_version=stable.version.version if stable else "",
        percent=deployment.percent,
        steps=steps,
        analysis=deployment.analysis or {},
        examples=shadow_examples(deployment=deployment) if deployment.strategy == "shadow" else [],
    )


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


# ---------------------------------------------------------------- the catalog


def curl_example(endpoint: str, instances: list) -> str:
    """A curl line that calls `endpoint` with the first of `instances` (the version's sample input)."""
    body = json.dumps({"instances": instances[:1]})
    headers = '-H "Authorization: Bearer $PORTAL_TOKEN" -H "Content-Type: application/json"'
    return f"curl {headers} \\\n     -d {shlex.quote(body)} {endpoint}"


@dataclass
class LiveApi:
    """One major version of a service live in one environment, as any signed-in user may see it."""

    environment: str
    major: int
    version: str
    endpoint: str
    input_schema: dict
    example: str
    deprecated: bool
    sunset_at: datetime | None
    deprecation_note: str


@dataclass
class CatalogEntry:
    """What the catalog shows of a service. The service is discoverable by everyone signed in
    (name, team, description, what is live, its input schema and an example call), so consumers
    can find it and ask for access; its model (artifact, metrics, versions not live, model
    card) stays behind `can_view`."""

    service: Service
    can_view: bool
    may_call: bool
    pending_request: AccessRequest | None
    live: list[LiveApi]

    @property
    def deprecated(self) -> bool:
        """Everything live is deprecated (False when nothing is live)."""
        return bool(self.live) and all(api.deprecated for api in self.live)


def catalog_list(*, search: str = "", team: str = "", environment: str = "") -> QuerySet[Service]:
    """Every service, for everyone signed in; `search` looks in the name, team and description,
    `environment` keeps services live there. Build entries for a page with `catalog_entries`."""
    found = Service.objects.all()
    if search:
        found = found.filter(
            Q(name__icontains=search) | Q(team__name__icontains=search) | Q(description__icontains=search)
        )
    if team:
        found = found.filter(team__name=team)
    if environment:
        found = found.filter(
            pk__in=Deployment.objects.filter(status=Status.LIVE, environment__name=environment).values("service")
        )
    return found.select_related("team").order_by("name")


def catalog_get(*, name: str) -> Service:
    """A service by name, for anyone signed in (the catalog shows them all)."""
    service = Service.objects.select_related("team", "model").filter(name=name).first()
    if service is None:
        raise NotFound(f"No service named '{name}'. Search the catalog: GET /api/v1/services?q=...")
    return service


def catalog_entries(*, user: User, services: list[Service] | QuerySet[Service]) -> list[CatalogEntry]:
    """Catalog entries for a page of services, in a constant number of queries."""
    services = list(services)
    ids = [s.pk for s in services]
    live = (
        Deployment.objects.filter(service_id__in=ids, status=Status.LIVE)
        .select_related("version", "environment")
        .order_by("environment__order", "-major")
    )
    live_by_service: dict[int, list[Deployment]] = {}
    for deployment in live:
        live_by_service.setdefault(deployment.service_id, []).append(deployment)
    deprecations = {(d.service_id, d.major): d for d in Deprecation.objects.filter(service_id__in=ids)}
    visible = set(
        get_objects_for_user(user, "deployments.view_service", klass=Service, accept_global_perms=False)
        .filter(pk__in=ids)
        .values_list("pk", flat=True)
    )
    callable_ids = _callable_service_ids(user=user, service_ids=ids)
    pending = {
        r.service_id: r
        for r in AccessRequest.objects.filter(
            service_id__in=ids, status=AccessRequest.Status.PENDING, requester=user, service_account__isnull=True
        )
    }
    entries = []
    for service in services:
        apis = []
        for d in live_by_service.get(service.pk, []):
            endpoint = (
                f"{settings.GATEWAY_URL}/serve/{contract.route_key(d.environment.name, service.name, d.major)}/predict"
            )
            deprecation = deprecations.get((service.pk, d.major))
            apis.append(
                LiveApi(
                    environment=d.environment.name,
                    major=d.major,
                    version=d.version.version,
                    endpoint=endpoint,
                    input_schema=d.version.input_schema,
                    example=curl_example(endpoint, d.version.sample_input or []),
                    deprecated=deprecation is not None,
                    sunset_at=deprecation.sunset_at if deprecation else None,
                    deprecation_note=deprecation.note if deprecation else "",
                )
            )
        entries.append(
            CatalogEntry(
                service=service,
                can_view=service.pk in visible,
                may_call=service.pk in callable_ids,
                pending_request=pending.get(service.pk),
                live=apis,
            )
        )
    return entries


def _callable_service_ids(*, user: User, service_ids: list[int]) -> set[int]:
    """Which of these services `user` may call through a grant (to them or a team of theirs);
    superusers are not callers by being superusers, as at the gateway."""
    if not service_ids:
        return set()
    checker = ObjectPermissionChecker(user)
    services = list(Service.objects.filter(pk__in=service_ids))
    if user.is_superuser:
        # The checker answers yes to everything for superusers; ask for their own grants.
        user_grants = set(
            Grant.objects.filter(service_id__in=service_ids, user=user).values_list("service_id", flat=True)
        )
        teams = Membership.objects.filter(user=user).values("team")
        team_grants = set(
            Grant.objects.filter(service_id__in=service_ids, team__in=teams).values_list("service_id", flat=True)
        )
        return user_grants | team_grants
    checker.prefetch_perms(services)
    return {s.pk for s in services if checker.has_perm("invoke_service", s)}


# ---------------------------------------------------------------- access requests


def services_decided_by(*, user: User) -> QuerySet[Service]:
    """The services whose access requests `user` decides (owners and maintainers of the team)."""
    return get_objects_for_user(user, "deployments.manage_grants", klass=Service, accept_global_perms=False)


def access_request_list(
    *, user: User, status: str = "", service: str = "", mine: bool = False, to_decide: bool = False
) -> QuerySet[AccessRequest]:
    """The access requests `user` may see: their own, and those they may decide.

    `mine` keeps their own, `to_decide` those they decide; `status` is one status or "" for all.
    """
    if status and status not in AccessRequest.Status.values:
        raise InvalidInput(
            f"status must be one of {', '.join(AccessRequest.Status.values)} (or empty for all).", field="status"
        )
    own = Q(requester=user)
    decided = Q(service__in=services_decided_by(user=user))
    if mine and not to_decide:
        visible = own
    elif to_decide and not mine:
        visible = decided
    else:
        visible = own | decided
    requests = AccessRequest.objects.filter(visible)
    if status:
        requests = requests.filter(status=status)
    if service:
        requests = requests.filter(service__name=service)
    return requests.select_related("service__team", "requester", "service_account", "decided_by", "grant")


def access_request_get(*, user: User, request_id: int) -> AccessRequest:
    found = access_request_list(user=user).filter(pk=request_id).first()
    if found is None:
        raise NotFound(f"No access request #{request_id} that you can see.")
    return found


def access_requests_to_decide_count(*, user: User) -> int:
    """How many pending requests wait for `user` (the number beside the nav link)."""
    if not user.is_authenticated:
        return 0
    return access_request_list(user=user, status=AccessRequest.Status.PENDING, to_decide=True).count()


def service_accounts_looked_after(*, user: User) -> QuerySet[User]:
    """The service accounts `user` may ask for access for: members of teams they own or maintain."""
    teams = Membership.objects.filter(user=user, role__in=[Role.OWNER, Role.MAINTAINER]).values("team")
    accounts = User.objects.filter(is_service_account=True, is_active=True)
    if not user.is_admin:
        accounts = accounts.filter(memberships__team__in=teams)
    return accounts.distinct().order_by("username")


def catalog_filters() -> dict[str, list[str]]:
    """The teams and environments the catalog can be filtered by."""
    return {
        "teams": list(Team.objects.filter(services__isnull=False).distinct().values_list("name", flat=True)),
        "environments": list(Environment.objects.values_list("name", flat=True)),
    }


# ---------------------------------------------------------------- usage per consumer, against its limits


@dataclass(frozen=True)
class ConsumerUsage:
    """One grant of a service: today's requests under it (UTC), as the gateways counted them,
    against its limits. Counts are None when they cannot be read (Redis away)."""

    grant: Grant
    requests: int | None  # admitted today
    refused: int | None  # refused today with 429 (rate limit or quota)

    @property
    def quota_remaining(self) -> int | None:
        if self.grant.daily_quota is None or self.requests is None:
            return None
        return max(0, self.grant.daily_quota - self.requests)

    @property
    def burst(self) -> float | None:
        """The burst the gateways apply: the grant's, or else one second of its rate."""
        if self.grant.rate_per_second is None:
            return None
        return contract.Allowance(
            grant=self.grant.pk, rate_per_second=self.grant.rate_per_second, burst=self.grant.burst
        ).capacity


def consumer_usage(*, service: Service) -> list[ConsumerUsage]:
    """Per grant of a service the caller could see: requests and 429s today, its daily quota
    and rate limit. The gateways add their counts every fraction of a second (gateway/limits.py)."""
    grants = list(grant_list(service=service))
    fields = []
    for grant in grants:
        fields += [
            contract.usage_field(service.name, grant.pk),
            contract.usage_field(service.name, grant.pk, refused=True),
        ]
    counts: list = [None] * len(fields)
    if fields:
        try:
            counts = [int(c or 0) for c in client().hmget(contract.usage_key(contract.utc_day(time.time())), fields)]
        except Exception as exc:  # noqa: BLE001 - the page still shows the limits when Redis is away
            log.warning("could not read today's usage of %s: %s", service.name, exc)
    return [
        ConsumerUsage(grant=grant, requests=counts[2 * n], refused=counts[2 * n + 1]) for n, grant in enumerate(grants)
    ]
