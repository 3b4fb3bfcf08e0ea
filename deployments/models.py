"""Environments, services, deployments, their events and running instances."""

from __future__ import annotations

import re

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase

from accounts.models import Team
from gateway import contract
from registry.models import ModelVersion, RegisteredModel


class Runtime(models.TextChoices):
    LOCAL = "local", "Local processes"
    DOCKER = "docker", "Docker Engine"
    SWARM = "swarm", "Docker Swarm"
    KUBERNETES = "kubernetes", "Kubernetes"


# A swarm placement constraint, as `docker service create --constraint` takes it: a node
# attribute or label, == or !=, and a value (https://docs.docker.com/engine/swarm/services/).
PLACEMENT_CONSTRAINT = re.compile(
    r"^(node\.(id|hostname|role|platform\.os|platform\.arch)|(node|engine)\.labels\.[A-Za-z0-9][A-Za-z0-9_.-]*)"
    r"\s*(==|!=)\s*[A-Za-z0-9][A-Za-z0-9_.:/-]*$"
)


def validate_placement(value) -> None:
    """A list of swarm placement constraints, each checked here rather than by the swarm at deploy time."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValidationError('Placement is a list of constraints, e.g. ["node.labels.tier==prod"].')
    if len(value) > 20:
        raise ValidationError("At most 20 placement constraints.")
    bad = [item for item in value if not PLACEMENT_CONSTRAINT.match(item.strip())]
    if bad:
        raise ValidationError(
            f"Not a placement constraint: {', '.join(bad)}. Write ATTRIBUTE==VALUE or ATTRIBUTE!=VALUE, where "
            "ATTRIBUTE is node.labels.NAME, engine.labels.NAME, node.hostname, node.id, node.role, "
            "node.platform.os or node.platform.arch (e.g. node.labels.tier==prod)."
        )


# name, description, requires approval, order (also created by migration 0002)
DEFAULT_ENVIRONMENTS = [
    ("development", "For trying things out: no approval needed.", False, 0),
    ("staging", "A rehearsal of production: IT approves.", True, 1),
    ("production", "What consumers rely on: IT approves.", True, 2),
]


class Environment(models.Model):
    name = models.SlugField(max_length=40, unique=True)
    description = models.CharField(max_length=200, blank=True)
    requires_approval = models.BooleanField(default=True, help_text="Deployments wait for an IT approver.")
    runtime = models.CharField(max_length=16, choices=Runtime.choices, default=Runtime.LOCAL)
    max_replicas = models.PositiveIntegerField(default=4, help_text="The most instances one deployment may ask for.")
    memory_mb = models.PositiveIntegerField(default=1024, help_text="Memory limit of each instance.")
    cpus = models.DecimalField(max_digits=5, decimal_places=2, default=1, help_text="CPU limit of each instance.")
    allow_unsandboxed = models.BooleanField(
        default=False,
        help_text=(
            "Run model code without a sandbox where none can be had (bubblewrap missing). Anyone who may deploy "
            "here can then run code as the portal's own user: only for a single-user machine."
        ),
    )
    placement = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_placement],
        help_text=(
            'Swarm runtime: the nodes this environment\'s instances may run on, e.g. ["node.labels.tier==prod"] '
            "(all must hold)."
        ),
    )
    allow_scale_to_zero = models.BooleanField(
        default=False,
        help_text=(
            "Autoscaled deployments here may stop every instance when idle (min replicas 0); the gateway holds "
            "the next request while one starts. Never for environments that need approval."
        ),
    )
    # Canary and shadow analysis: a candidate is judged against the stable version on these.
    canary_max_error_rate_increase = models.FloatField(
        default=0.02,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Canary: the most the candidate's error rate may exceed the stable one's (0.02 = 2 points).",
    )
    canary_max_p95_ratio = models.FloatField(
        default=1.5,
        validators=[MinValueValidator(1.0), MaxValueValidator(100.0)],
        help_text="Canary and shadow: the most the candidate's p95 latency may be, as a multiple of the stable one's.",
    )
    canary_min_p95_increase_ms = models.PositiveIntegerField(
        default=25,
        validators=[MaxValueValidator(600_000)],
        help_text="A slower p95 counts only when it is also this many milliseconds slower (tiny p95s do not trip).",
    )
    canary_min_requests = models.PositiveIntegerField(
        default=50,
        validators=[MinValueValidator(1), MaxValueValidator(1_000_000)],
        help_text="Requests the candidate must answer in a step before it is judged.",
    )
    shadow_min_agreement = models.FloatField(
        default=0.95,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Shadow: the least share of copies whose predictions must equal the stable version's.",
    )
    canary_max_quality_drop = models.FloatField(
        default=0.05,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text=(
            "Canary: how much worse the candidate's live quality from ground truth may be than the stable one's, "
            "relatively (0.05: accuracy at least 0.95 x stable's, RMSE at most 1.05 x stable's)."
        ),
    )
    canary_min_outcomes = models.PositiveIntegerField(
        default=50,
        validators=[MinValueValidator(1), MaxValueValidator(1_000_000)],
        help_text="Predictions with an outcome sent for them each version needs in a step before quality is compared.",
    )
    order = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["order", "name"]

    def __str__(self) -> str:
        return self.name

    @classmethod
    def ensure_defaults(cls) -> None:
        for name, description, requires_approval, order in DEFAULT_ENVIRONMENTS:
            cls.objects.get_or_create(
                name=name,
                defaults={
                    "description": description,
                    "requires_approval": requires_approval,
                    "order": order,
                    # Only where nobody approves: a cold start is fine for trying things out.
                    "allow_scale_to_zero": not requires_approval,
                },
            )


# The highest cap on instances per request a service may set (a request is also bounded by
# GATEWAY_MAX_BODY_BYTES).
MAX_INSTANCES_LIMIT = 100_000


class Service(models.Model):
    """The stable name consumers call; each major version of its model is its own API."""

    name = models.SlugField(max_length=100, unique=True)
    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="services")
    model = models.ForeignKey(RegisteredModel, on_delete=models.PROTECT, related_name="services")
    description = models.CharField(max_length=500, blank=True)
    max_instances = models.PositiveIntegerField(
        default=contract.DEFAULT_MAX_INSTANCES,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_INSTANCES_LIMIT)],
        help_text="The most instances one prediction request may carry; the gateway answers 413 beyond.",
    )
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["name"]
        permissions = [
            ("invoke_service", "Can call the service through the gateway"),
            ("deploy_service", "Can request deployments of the service"),
            ("manage_grants", "Can grant and revoke the right to call the service"),
        ]

    def __str__(self) -> str:
        return self.name


class Deprecation(models.Model):
    """A major version of a service that callers should move off, in every environment.

    The gateway then answers calls to it with `Deprecation` (RFC 9745) and, when a date is
    set, `Sunset` (RFC 8594) headers, so client libraries and proxies can warn their owners.
    """

    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="deprecations")
    major = models.PositiveIntegerField()
    sunset_at = models.DateTimeField(null=True, blank=True, help_text="When this major stops being served.")
    note = models.CharField(max_length=500, blank=True, help_text="What callers should do, e.g. 'Move to /v2'.")
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["service", "major"]
        constraints = [models.UniqueConstraint(fields=["service", "major"], name="deprecation_one_per_major")]

    def __str__(self) -> str:
        return f"{self.service.name} v{self.major} deprecated"


class ServiceUserObjectPermission(UserObjectPermissionBase):
    content_object = models.ForeignKey(Service, on_delete=models.CASCADE)


class ServiceGroupObjectPermission(GroupObjectPermissionBase):
    content_object = models.ForeignKey(Service, on_delete=models.CASCADE)


class Status(models.TextChoices):
    REQUESTED = "requested", "Requested"
    PENDING_APPROVAL = "pending_approval", "Waiting for approval"
    APPROVED = "approved", "Approved"
    PROVISIONING = "provisioning", "Provisioning"
    LIVE = "live", "Live"
    SUPERSEDED = "superseded", "Superseded"
    STOPPED = "stopped", "Stopped"
    REJECTED = "rejected", "Rejected"
    FAILED = "failed", "Failed"
    ROLLED_BACK = "rolled_back", "Rolled back"
    CANCELLED = "cancelled", "Cancelled"
    CANARY = "canary", "Canary"
    SHADOW = "shadow", "Shadow test"


# The statuses of a deployment that has not finished its rollout (deployments.states.ACTIVE).
IN_FLIGHT = [
    Status.REQUESTED,
    Status.PENDING_APPROVAL,
    Status.APPROVED,
    Status.PROVISIONING,
    Status.CANARY,
    Status.SHADOW,
]
# A candidate being tried beside the route's live version (its instances run and get traffic).
TRYING = [Status.CANARY, Status.SHADOW]


class Strategy(models.TextChoices):
    BLUE_GREEN = "blue_green", "Blue/green"
    CANARY = "canary", "Canary"
    SHADOW = "shadow", "Shadow"


DEFAULT_CANARY_STEPS = [5, 25, 50, 100]
DEFAULT_BAKE_SECONDS = 300
DEFAULT_SHADOW_PERCENT = 10


class Deployment(models.Model):
    """One model version of a service in one environment. Its status changes only through
    `deployments.states.transition`, one conditional update and one event each."""

    service = models.ForeignKey(Service, on_delete=models.PROTECT, related_name="deployments")
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="deployments")
    environment = models.ForeignKey(Environment, on_delete=models.PROTECT, related_name="deployments")
    major = models.PositiveIntegerField(help_text="The API this deployment serves: /v{major}.")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.REQUESTED, db_index=True)
    # With autoscaling (target_in_flight set) `replicas` is the number the autoscaler last
    # chose, between min_replicas and max_replicas; without it, the fixed number asked for.
    replicas = models.PositiveIntegerField(default=1)
    min_replicas = models.PositiveIntegerField(null=True, blank=True, help_text="Autoscaling: the fewest instances.")
    max_replicas = models.PositiveIntegerField(null=True, blank=True, help_text="Autoscaling: the most instances.")
    target_in_flight = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Autoscaling: requests in flight per instance the autoscaler aims for. Empty: no autoscaling.",
    )
    scale_down_after_seconds = models.PositiveIntegerField(
        default=60, help_text="Autoscaling: how long demand must stay lower before instances are removed."
    )
    last_cold_start_seconds = models.FloatField(
        null=True, blank=True, help_text="From the first held request to an instance serving, at the last cold start."
    )
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    reason = models.CharField(max_length=500, blank=True, help_text="Why this deployment was requested.")
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    decision_comment = models.CharField(max_length=1000, blank=True)
    rollback_of = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The live deployment this one rolls back.",
    )
    failure_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    live_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    # A lease: the worker that runs this deployment's rollout holds it and renews it; an
    # expired lease means the worker died, and the reconciler hands the rollout to another.
    lease_owner = models.CharField(max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # How the new version replaces the live one (deployments/strategies.py runs canary and shadow).
    strategy = models.CharField(max_length=12, choices=Strategy.choices, default=Strategy.BLUE_GREEN)
    steps = models.JSONField(default=list, blank=True, help_text="Canary: the percents of traffic, ending at 100.")
    bake_seconds = models.PositiveIntegerField(
        default=DEFAULT_BAKE_SECONDS, help_text="Canary: how long each step runs before it is judged and passed."
    )
    shadow_percent = models.PositiveIntegerField(
        default=DEFAULT_SHADOW_PERCENT, help_text="Shadow: the share of live requests copied to the candidate."
    )
    sticky = models.BooleanField(default=False, help_text="Canary: one caller sees one version.")
    step_index = models.PositiveIntegerField(default=0, help_text="Canary: the current step (0 is the first).")
    step_started_at = models.DateTimeField(null=True, blank=True)
    # The gateway's counts of both versions when the step started: a step is judged on what came after.
    step_baseline = models.JSONField(default=dict, blank=True)
    paused = models.BooleanField(default=False, help_text="A person paused the canary: it stays at its step.")
    analysis = models.JSONField(default=dict, blank=True, help_text="The last comparison of candidate and stable.")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["service", "environment", "major", "status"])]
        constraints = [
            # One deployment in flight per route: the services check first (with a clear
            # message), and this holds when two requests race past that check together.
            models.UniqueConstraint(
                fields=["service", "environment", "major"],
                condition=models.Q(status__in=IN_FLIGHT),
                name="deployment_one_in_flight_per_route",
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.service.name} {self.version.version} → {self.environment.name}"

    @property
    def route_key(self) -> str:
        return contract.route_key(self.environment.name, self.service.name, self.major)

    @property
    def autoscaled(self) -> bool:
        return self.target_in_flight is not None

    @property
    def trying(self) -> bool:
        return self.status in TRYING

    @property
    def percent(self) -> float:
        """The candidate's share now: of requests served (canary) or copied (shadow)."""
        if self.status == Status.SHADOW:
            return float(self.shadow_percent)
        if self.status == Status.CANARY and self.steps:
            return float(self.steps[min(self.step_index, len(self.steps) - 1)])
        return 0.0


class DeploymentEvent(models.Model):
    """The live log of a deployment. `step` names an idempotent step of the rollout: a
    resumed rollout that repeats a step does not write its event twice."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="events")
    created_at = models.DateTimeField(default=timezone.now)
    step = models.CharField(max_length=100, blank=True)
    from_status = models.CharField(max_length=20, blank=True)
    to_status = models.CharField(max_length=20, blank=True)
    message = models.TextField()
    level = models.CharField(max_length=10, default="info")
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["deployment", "step"], condition=~models.Q(step=""), name="deploymentevent_unique_step"
            )
        ]

    def __str__(self) -> str:
        return self.message


class InstanceState(models.TextChoices):
    STARTING = "starting", "Starting"
    READY = "ready", "Ready"
    DRAINING = "draining", "Draining"
    STOPPED = "stopped", "Stopped"
    FAILED = "failed", "Failed"


class Instance(models.Model):
    """A running model server of a deployment, as the runtime backend knows it."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="instances")
    name = models.CharField(max_length=100, unique=True, help_text="The backend's name for it.")
    backend = models.CharField(max_length=16, choices=Runtime.choices)
    url = models.CharField(max_length=200, blank=True)
    state = models.CharField(max_length=16, choices=InstanceState.choices, default=InstanceState.STARTING)
    restarts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["deployment_id", "name"]

    def __str__(self) -> str:
        return self.name


class PredictionLogging(models.Model):
    """How the predictions of a service in an environment are logged (the gateway samples,
    the worker stores them in Parquet files, a sweep removes them after `retention_days`).

    Without a row, the defaults apply (PREDICTION_LOG_* settings): every prediction logged
    with its payloads, kept 30 days.
    """

    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="prediction_logging")
    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="+")
    enabled = models.BooleanField(default=True)
    sample_rate = models.FloatField(
        default=1.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="The share of predictions logged, from 0 to 1.",
    )
    keep_payloads = models.BooleanField(
        default=True,
        help_text="Keep the instances and predictions themselves; otherwise only ids, times, sizes and outcomes.",
    )
    retention_days = models.PositiveIntegerField(
        default=30, validators=[MinValueValidator(1), MaxValueValidator(3650)], help_text="Days logs are kept."
    )
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["service", "environment"], name="prediction_logging_once_per_environment")
        ]

    def __str__(self) -> str:
        return f"prediction log of {self.service_id} in {self.environment_id}"

    @classmethod
    def effective(cls, service: Service, environment: Environment) -> PredictionLogging:
        """The row for this service and environment, or an unsaved one with the defaults."""
        found = cls.objects.filter(service=service, environment=environment).first()
        return found or cls.default(service, environment)

    @classmethod
    def default(cls, service: Service, environment: Environment) -> PredictionLogging:
        return cls(
            service=service,
            environment=environment,
            enabled=settings.PREDICTION_LOG_ENABLED,
            sample_rate=settings.PREDICTION_LOG_SAMPLE_RATE,
            keep_payloads=settings.PREDICTION_LOG_PAYLOADS,
            retention_days=settings.PREDICTION_LOG_RETENTION_DAYS,
        )


class Grant(models.Model):
    """Who may call a service: a user (a person or a service account) or a whole team.

    The grant row is what people see and revoke; the permission it stands for is a
    django-guardian object permission (`invoke_service`) given to the user, or to every
    role group of the team, by the service that creates the grant.
    """

    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="grants")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="service_grants"
    )
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.CASCADE, related_name="service_grants")
    permission = models.CharField(max_length=20, default="invoke")
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Optional limits, enforced by every gateway (a token bucket per gateway, reconciled through Redis).
    expires_at = models.DateTimeField(
        null=True, blank=True, db_index=True, help_text="After this the grant is removed and republished."
    )
    rate_per_second = models.FloatField(
        null=True, blank=True, help_text="Sustained requests per second; empty for no limit."
    )
    burst = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests that may come at once above the rate; defaults to the rate."
    )
    daily_quota = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests per UTC day; empty for no quota."
    )

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.CheckConstraint(
                condition=(models.Q(user__isnull=False) & models.Q(team__isnull=True))
                | (models.Q(user__isnull=True) & models.Q(team__isnull=False)),
                name="grant_user_xor_team",
            ),
            models.UniqueConstraint(fields=["service", "user"], name="grant_unique_user"),
            models.UniqueConstraint(fields=["service", "team"], name="grant_unique_team"),
        ]

    def __str__(self) -> str:
        who = f"team {self.team.name}" if self.team_id else f"user {self.user.username}"
        return f"{who} may {self.permission} {self.service.name}"


class AccessRequest(models.Model):
    """Someone asks to call a service: for themselves, or for a service account they look after.

    The owning team's owners and maintainers decide. An approved request becomes a `Grant`
    (made by the same service as any other grant, so the permission is given and published)
    and keeps a link to it; `expires_at` is the end the requester asked for, or the approver set.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"
        WITHDRAWN = "withdrawn", "Withdrawn"

    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="access_requests")
    requester = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="access_requests")
    service_account = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="+",
        help_text="The service account that would call; empty when the requester asks for themselves.",
    )
    reason = models.CharField(max_length=1000)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING, db_index=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    comment = models.CharField(max_length=1000, blank=True, help_text="The decision's comment.")
    grant = models.ForeignKey(
        Grant,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="access_requests",
        help_text="The grant an approval made (empty again once it is revoked or expires).",
    )
    expires_at = models.DateTimeField(null=True, blank=True, help_text="When the access should end; empty for never.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # One pending request per service and caller; the services check first with a clear
            # message, and these hold when two requests race past that check.
            models.UniqueConstraint(
                fields=["service", "requester"],
                condition=models.Q(status="pending", service_account__isnull=True),
                name="access_request_one_pending_per_user",
            ),
            models.UniqueConstraint(
                fields=["service", "service_account"],
                condition=models.Q(status="pending", service_account__isnull=False),
                name="access_request_one_pending_per_service_account",
            ),
        ]

    def __str__(self) -> str:
        return f"access request #{self.pk} of {self.subject.username} to {self.service.name}"

    @property
    def subject(self):
        """Who would call the service: the service account, or else the requester."""
        return self.service_account if self.service_account_id else self.requester
