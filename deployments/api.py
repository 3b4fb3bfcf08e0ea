"""REST API for environments, services, grants and deployments."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_date
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors as account_selectors
from accounts.permissions import IsAdmin, TokenScopePermission
from core.errors import InvalidInput, NotAllowed, NotFound
from core.openapi import NameField, VersionField, documented
from core.rest import Pagination, StrictSerializer
from deployments import selectors, services
from deployments.models import (
    MAX_INSTANCES_LIMIT,
    AccessRequest,
    Deployment,
    DeploymentEvent,
    Deprecation,
    Environment,
    Grant,
    PredictionLogging,
    Runtime,
    Service,
    Strategy,
    validate_placement,
)
from registry import selectors as registry_selectors

ADMIN_ONLY = [IsAuthenticated, TokenScopePermission, IsAdmin]


# ---------------------------------------------------------------- shapes


# What a canary or shadow in an environment is judged on (admins change them).
CANARY_THRESHOLDS = (
    "canary_max_error_rate_increase",
    "canary_max_p95_ratio",
    "canary_min_p95_increase_ms",
    "canary_min_requests",
    "shadow_min_agreement",
    "canary_max_quality_drop",
    "canary_min_outcomes",
)


class EnvironmentOutput(serializers.ModelSerializer):
    placement = serializers.ListField(
        child=serializers.CharField(), help_text="Swarm placement constraints, e.g. node.labels.tier==prod."
    )

    class Meta:
        model = Environment
        fields = [
            "name",
            "description",
            "requires_approval",
            "runtime",
            "max_replicas",
            "allow_scale_to_zero",
            "placement",
            *CANARY_THRESHOLDS,
        ]


class EventOutput(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor.username", allow_null=True, default=None)

    class Meta:
        model = DeploymentEvent
        fields = ["id", "created_at", "level", "from_status", "to_status", "message", "actor"]


class InstanceOutput(serializers.Serializer):
    name = serializers.CharField()
    state = serializers.CharField()
    url = serializers.CharField()
    restarts = serializers.IntegerField()


class DeploymentOutput(serializers.ModelSerializer):
    service = serializers.CharField(source="service.name")
    version = serializers.CharField(source="version.version")
    environment = serializers.CharField(source="environment.name")
    requested_by = serializers.CharField(source="requested_by.username")
    decided_by = serializers.CharField(source="decided_by.username", allow_null=True, default=None)
    endpoint = serializers.SerializerMethodField()
    percent = serializers.FloatField(
        read_only=True,
        help_text="Canary: the share of requests the candidate serves now; shadow: the share copied to it; else 0.",
    )

    class Meta:
        model = Deployment
        fields = [
            "id",
            "status",
            "service",
            "version",
            "environment",
            "major",
            "replicas",
            "min_replicas",
            "max_replicas",
            "target_in_flight",
            "scale_down_after_seconds",
            "last_cold_start_seconds",
            "requested_by",
            "reason",
            "decided_by",
            "decision_comment",
            "failure_reason",
            "created_at",
            "updated_at",
            "live_at",
            "endpoint",
            "strategy",
            "steps",
            "bake_seconds",
            "shadow_percent",
            "sticky",
            "step_index",
            "step_started_at",
            "paused",
            "percent",
        ]

    def get_endpoint(self, deployment: Deployment) -> str:
        return f"{settings.GATEWAY_URL}/serve/{deployment.route_key}/predict"


class SideOutput(serializers.Serializer):
    version = serializers.CharField()
    requests = serializers.IntegerField(help_text="Requests answered (shadow candidate: copies sent) in the window.")
    errors = serializers.IntegerField(help_text="Server errors (shadow candidate: copies that failed).")
    error_rate = serializers.FloatField()
    p50_ms = serializers.FloatField(allow_null=True)
    p95_ms = serializers.FloatField(allow_null=True)
    agreement = serializers.FloatField(allow_null=True, help_text="Shadow: share of copies whose predictions agree.")
    agree = serializers.IntegerField()
    disagree = serializers.IntegerField()
    dropped = serializers.IntegerField(help_text="Shadow: copies the gateways dropped under load.")
    labelled = serializers.IntegerField(
        required=False, help_text="Canary: its logged predictions in the step with an outcome sent for them."
    )
    quality = serializers.FloatField(
        required=False, allow_null=True, help_text="Canary: the live quality_metric on those, from ground truth."
    )
    quality_error = serializers.FloatField(
        required=False, help_text="Canary: the standard error of that quality (how far off it may be by chance)."
    )


class AnalysisOutput(serializers.Serializer):
    at = serializers.FloatField(help_text="Epoch seconds of this comparison.")
    step = serializers.IntegerField()
    judged = serializers.BooleanField(help_text="The candidate had answered min_requests: it was judged.")
    regression = serializers.CharField(help_text="Why the candidate is worse; empty when it is not.")
    min_requests = serializers.IntegerField()
    quality_metric = serializers.CharField(
        required=False,
        help_text="Canary: the live metric compared from ground truth (accuracy, rmse); empty when the task has none.",
    )
    quality_at = serializers.FloatField(required=False, help_text="Epoch seconds when the live quality was read.")
    quality_took = serializers.FloatField(required=False, help_text="Seconds reading it took.")
    min_outcomes = serializers.IntegerField(
        required=False, help_text="Outcomes each version needs in the step before its quality is compared."
    )
    verdict = serializers.CharField(required=False, help_text="The comparison in a sentence, as the page shows it.")
    candidate = SideOutput()
    stable = SideOutput()


class ShadowExampleOutput(serializers.Serializer):
    ts = serializers.FloatField()
    instances = serializers.JSONField()
    stable = serializers.JSONField(help_text="The predictions callers got (the live version's).")
    candidate = serializers.JSONField(help_text="The candidate's predictions for the same instances.")


class DeploymentDetailOutput(DeploymentOutput):
    events = serializers.SerializerMethodField()
    instances = serializers.SerializerMethodField()
    analysis = serializers.SerializerMethodField()
    shadow_examples = serializers.SerializerMethodField()

    class Meta(DeploymentOutput.Meta):
        fields = [*DeploymentOutput.Meta.fields, "analysis", "shadow_examples", "instances", "events"]

    @extend_schema_field(AnalysisOutput(allow_null=True))
    def get_analysis(self, deployment: Deployment) -> dict | None:
        """The current step's comparison of candidate and stable (canary and shadow only)."""
        return deployment.analysis or None

    @extend_schema_field(ShadowExampleOutput(many=True))
    def get_shadow_examples(self, deployment: Deployment) -> list[dict]:
        if deployment.strategy != Strategy.SHADOW:
            return []
        return [dataclasses.asdict(e) for e in selectors.shadow_examples(deployment=deployment)]

    @extend_schema_field(EventOutput(many=True))
    def get_events(self, deployment: Deployment) -> list[dict]:
        return EventOutput(selectors.deployment_events(deployment=deployment), many=True).data

    @extend_schema_field(InstanceOutput(many=True))
    def get_instances(self, deployment: Deployment) -> list[dict]:
        return InstanceOutput(deployment.instances.order_by("name"), many=True).data


class GrantOutput(serializers.ModelSerializer):
    user = serializers.CharField(source="user.username", allow_null=True, default=None)
    team = serializers.CharField(source="team.name", allow_null=True, default=None)
    created_by = serializers.CharField(source="created_by.username", allow_null=True, default=None)
    expires_at = serializers.DateTimeField(allow_null=True, default_timezone=UTC)

    class Meta:
        model = Grant
        fields = [
            "id",
            "user",
            "team",
            "permission",
            "created_at",
            "created_by",
            "expires_at",
            "rate_per_second",
            "burst",
            "daily_quota",
        ]


class CatalogLiveOutput(serializers.Serializer):
    environment = serializers.CharField()
    major = serializers.IntegerField()
    version = serializers.CharField(help_text="The version live there.")
    endpoint = serializers.CharField()
    input_schema = serializers.JSONField(help_text="The JSON Schema of one instance.")
    example = serializers.CharField(help_text="A curl line calling it with the version's sample input.")
    deprecated = serializers.BooleanField()
    sunset = serializers.DateTimeField(source="sunset_at", allow_null=True, default_timezone=UTC)
    deprecation_note = serializers.CharField()


class CatalogOutput(serializers.Serializer):
    """A service as the catalog shows it to anyone signed in; `model` only to who may see it."""

    name = serializers.CharField(source="service.name")
    team = serializers.CharField(source="service.team.name")
    description = serializers.CharField(source="service.description")
    model = serializers.SerializerMethodField(help_text="Null unless you may see the service's model.")
    created_at = serializers.DateTimeField(source="service.created_at")
    live = CatalogLiveOutput(many=True)
    deprecated = serializers.BooleanField(help_text="Everything live is deprecated.")
    can_view = serializers.BooleanField(help_text="You may see the model, its versions and the service's details.")
    may_call = serializers.BooleanField(help_text="You hold a grant to call it (yourself or through a team).")
    pending_request = serializers.SerializerMethodField(help_text="Your pending access request's id, if any.")

    def get_model(self, entry) -> str | None:
        return entry.service.model.name if entry.can_view else None

    def get_pending_request(self, entry) -> int | None:
        return entry.pending_request.pk if entry.pending_request else None


class AccessRequestOutput(serializers.ModelSerializer):
    service = serializers.CharField(source="service.name")
    team = serializers.CharField(source="service.team.name")
    requester = serializers.CharField(source="requester.username")
    service_account = serializers.CharField(source="service_account.username", allow_null=True, default=None)
    decided_by = serializers.CharField(source="decided_by.username", allow_null=True, default=None)
    grant = serializers.IntegerField(source="grant_id", allow_null=True)
    expires_at = serializers.DateTimeField(allow_null=True, default_timezone=UTC)

    class Meta:
        model = AccessRequest
        fields = [
            "id",
            "service",
            "team",
            "requester",
            "service_account",
            "reason",
            "status",
            "created_at",
            "expires_at",
            "decided_by",
            "decided_at",
            "comment",
            "grant",
        ]


class ServiceOutput(serializers.ModelSerializer):
    team = serializers.CharField(source="team.name")
    model = serializers.CharField(source="model.name")

    class Meta:
        model = Service
        fields = ["name", "team", "model", "description", "max_instances", "created_at"]


class LiveOutput(serializers.Serializer):
    environment = serializers.CharField()
    major = serializers.IntegerField()
    version = serializers.CharField()
    deployment = serializers.IntegerField()
    endpoint = serializers.CharField()
    deprecated = serializers.BooleanField()


class DeprecationOutput(serializers.ModelSerializer):
    sunset = serializers.DateTimeField(source="sunset_at", allow_null=True, default_timezone=UTC)
    created_by = serializers.CharField(source="created_by.username", allow_null=True, default=None)

    class Meta:
        model = Deprecation
        fields = ["major", "sunset", "note", "created_at", "created_by"]


class ServiceDetailOutput(ServiceOutput):
    live = serializers.SerializerMethodField()
    deprecations = serializers.SerializerMethodField()

    class Meta(ServiceOutput.Meta):
        fields = [*ServiceOutput.Meta.fields, "live", "deprecations"]

    @extend_schema_field(LiveOutput(many=True))
    def get_live(self, service: Service) -> list[dict]:
        deprecated = {d.major for d in selectors.deprecation_list(service=service)}
        return [
            {
                "environment": d.environment.name,
                "major": d.major,
                "version": d.version.version,
                "deployment": d.pk,
                "endpoint": f"{settings.GATEWAY_URL}/serve/{d.route_key}/predict",
                "deprecated": d.major in deprecated,
            }
            for d in selectors.live_by_route(service=service)
        ]

    @extend_schema_field(DeprecationOutput(many=True))
    def get_deprecations(self, service: Service) -> list[dict]:
        return DeprecationOutput(selectors.deprecation_list(service=service), many=True).data


# ---------------------------------------------------------------- environments


class EnvironmentListApi(APIView):
    @extend_schema(responses=EnvironmentOutput(many=True), summary="Environments and their rules")
    def get(self, request):
        return Response(EnvironmentOutput(selectors.environment_list(), many=True).data)


class EnvironmentDetailApi(APIView):
    def get_permissions(self):
        # Anyone signed in reads an environment's rules (as in the list); only admins change them.
        return [p() for p in ADMIN_ONLY] if self.request.method == "PATCH" else super().get_permissions()

    @extend_schema(responses=EnvironmentOutput, summary="An environment and its rules")
    def get(self, request, name: str):
        return Response(EnvironmentOutput(selectors.environment_get(name=name)).data)

    class EnvironmentUpdateInput(StrictSerializer):
        requires_approval = serializers.BooleanField(required=False)
        runtime = serializers.ChoiceField(choices=Runtime.choices, required=False)
        max_replicas = serializers.IntegerField(required=False, min_value=1, max_value=64)
        allow_scale_to_zero = serializers.BooleanField(required=False)
        description = serializers.CharField(required=False, allow_blank=True, max_length=200)
        placement = serializers.ListField(
            child=serializers.CharField(max_length=200),
            required=False,
            validators=[validate_placement],
            help_text="Swarm runtime: constraints every node running this environment's instances must meet.",
        )
        canary_max_error_rate_increase = serializers.FloatField(
            required=False, min_value=0, max_value=1, help_text="0.02: a candidate may fail 2 points more than stable."
        )
        canary_max_p95_ratio = serializers.FloatField(required=False, min_value=1, max_value=100)
        canary_min_p95_increase_ms = serializers.IntegerField(required=False, min_value=0, max_value=600_000)
        canary_min_requests = serializers.IntegerField(required=False, min_value=1, max_value=1_000_000)
        shadow_min_agreement = serializers.FloatField(required=False, min_value=0, max_value=1)
        canary_max_quality_drop = serializers.FloatField(
            required=False,
            min_value=0,
            max_value=1,
            help_text="0.05: a candidate's live accuracy may be at least 0.95 x stable's (RMSE at most 1.05 x).",
        )
        canary_min_outcomes = serializers.IntegerField(required=False, min_value=1, max_value=1_000_000)

    @extend_schema(
        request=EnvironmentUpdateInput, responses=EnvironmentOutput, summary="Change an environment (admins)"
    )
    def patch(self, request, name: str):
        environment = selectors.environment_get(name=name)
        serializer = self.EnvironmentUpdateInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        environment = services.environment_update(
            actor=request.user, environment=environment, **serializer.validated_data
        )
        return Response(EnvironmentOutput(environment).data)


# ---------------------------------------------------------------- services and grants


class ServiceListApi(APIView):
    pagination_class = Pagination  # the schema documents the list as paginated

    class ServiceCreateInput(StrictSerializer):
        name = NameField(max_length=100)
        team = NameField(max_length=64)
        model = NameField(max_length=100)
        description = serializers.CharField(required=False, allow_blank=True, default="", max_length=500)

    @extend_schema(
        parameters=[
            OpenApiParameter("q", str, description="Words in the name, the team or the description"),
            OpenApiParameter("search", str, description="The same as q (kept for older clients)"),
            OpenApiParameter("team", str, description="Only this team's services"),
            OpenApiParameter("environment", str, description="Only services live in this environment"),
        ],
        responses=CatalogOutput(many=True),
        summary="The catalog: every service, what is live where, its input schema and an example call",
    )
    def get(self, request):
        params = request.query_params
        environment = params.get("environment", "").strip()
        if environment:
            try:
                selectors.environment_get(name=environment)
            except NotFound as exc:
                raise InvalidInput(exc.message, field="environment") from None
        found = selectors.catalog_list(
            search=(params.get("q") or params.get("search") or "").strip(),
            team=params.get("team", "").strip(),
            environment=environment,
        )
        paginator = Pagination()
        page = paginator.paginate_queryset(found, request, view=self)
        entries = selectors.catalog_entries(user=request.user, services=page)
        return paginator.get_paginated_response(CatalogOutput(entries, many=True).data)

    @extend_schema(request=ServiceCreateInput, responses={201: ServiceDetailOutput}, summary="Create a service")
    def post(self, request):
        serializer = self.ServiceCreateInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        team = account_selectors.team_get(user=request.user, name=data["team"])
        try:
            model = registry_selectors.model_get(user=request.user, name=data["model"])
        except NotFound as exc:
            raise InvalidInput(exc.message, field="model") from None
        service = services.service_create(
            actor=request.user, name=data["name"], team=team, model=model, description=data["description"]
        )
        return Response(ServiceDetailOutput(service).data, status=status.HTTP_201_CREATED)


class ServiceDetailApi(APIView):
    class ServiceUpdateInput(StrictSerializer):
        description = serializers.CharField(required=False, allow_blank=True, max_length=500)
        max_instances = serializers.IntegerField(
            required=False, min_value=1, max_value=MAX_INSTANCES_LIMIT, help_text="Instances per request at most."
        )

    @extend_schema(responses=ServiceDetailOutput, summary="A service and where it is live")
    def get(self, request, name: str):
        return Response(ServiceDetailOutput(selectors.service_get(user=request.user, name=name)).data)

    @extend_schema(
        request=ServiceUpdateInput,
        responses=ServiceDetailOutput,
        summary="Change a service's description or its cap on instances per request",
    )
    def patch(self, request, name: str):
        service = selectors.service_get(user=request.user, name=name)
        serializer = self.ServiceUpdateInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.service_update(actor=request.user, service=service, **serializer.validated_data)
        return Response(ServiceDetailOutput(selectors.service_get(user=request.user, name=name)).data)


class SunsetField(serializers.DateTimeField):
    """A date and time, or a date alone (meaning its start, in UTC)."""

    def to_internal_value(self, value):
        if isinstance(value, str):
            try:
                day = parse_date(value.strip())
            except ValueError:  # shaped like a date, but no such day (2027-02-30)
                self.fail("invalid", format="YYYY-MM-DD or YYYY-MM-DDThh:mm[:ss][+HH:MM|Z]")
            if day is not None:
                return datetime.combine(day, datetime.min.time(), tzinfo=UTC)
        return super().to_internal_value(value)


# An expiry is written like a sunset: a date (its start, UTC) or a date and time.
ExpiryField = SunsetField


class GrantLimitsInput(StrictSerializer):
    expires_at = ExpiryField(
        required=False, allow_null=True, help_text="When the grant is removed (a date or a date and time, future)."
    )
    rate_per_second = serializers.FloatField(
        required=False, allow_null=True, help_text="Sustained requests per second (more than 0); null: no limit."
    )
    burst = serializers.IntegerField(
        required=False, allow_null=True, help_text="Requests at once above the rate (1 or more); null: the rate."
    )
    daily_quota = serializers.IntegerField(
        required=False, allow_null=True, help_text="Requests per UTC day (1 or more); null: no quota."
    )


class GrantListApi(APIView):
    class GrantCreateInput(GrantLimitsInput):
        user = serializers.CharField(required=False, help_text="A user or service account")
        team = serializers.CharField(required=False)
        permission = serializers.ChoiceField(choices=[("invoke", "invoke")], default="invoke")

    @extend_schema(responses=GrantOutput(many=True), summary="Who may call the service, with limits and expiry")
    def get(self, request, name: str):
        service = selectors.service_get(user=request.user, name=name)
        return Response(GrantOutput(selectors.grant_list(service=service), many=True).data)

    @extend_schema(
        request=GrantCreateInput,
        responses={201: GrantOutput},
        summary="Let a user or team call the service, optionally until a date and within limits",
    )
    def post(self, request, name: str):
        service = selectors.service_get(user=request.user, name=name)
        serializer = self.GrantCreateInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if ("user" in data) == ("team" in data):
            raise InvalidInput("Give exactly one of 'user' and 'team'.")
        if not request.user.has_perm("deployments.manage_grants", service):  # before lookups: no probing
            raise NotAllowed(f"Only owners and maintainers of team '{service.team.name}' may grant access.")
        user = account_selectors.user_get(username=data["user"], field="user") if "user" in data else None
        team = account_selectors.team_by_name(name=data["team"]) if "team" in data else None
        limits = services.GrantLimits(**{k: data.get(k) for k in LIMIT_FIELDS})
        grant = services.grant_create(actor=request.user, service=service, user=user, team=team, limits=limits)
        return Response(GrantOutput(grant).data, status=status.HTTP_201_CREATED)


LIMIT_FIELDS = ("expires_at", "rate_per_second", "burst", "daily_quota")


class GrantDetailApi(APIView):
    @extend_schema(responses=GrantOutput, summary="A grant")
    def get(self, request, name: str, grant_id: int):
        service = selectors.service_get(user=request.user, name=name)
        return Response(GrantOutput(selectors.grant_get(service=service, grant_id=grant_id)).data)

    @extend_schema(
        request=GrantLimitsInput,
        responses=GrantOutput,
        summary="Change a grant's expiry or limits (null removes one); the gateways apply it at once",
    )
    def patch(self, request, name: str, grant_id: int):
        service = selectors.service_get(user=request.user, name=name)
        grant = selectors.grant_get(service=service, grant_id=grant_id)
        serializer = GrantLimitsInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        if not serializer.validated_data:
            raise InvalidInput(f"Give at least one of {', '.join(LIMIT_FIELDS)} to change.")
        grant = services.grant_update(actor=request.user, grant=grant, **serializer.validated_data)
        return Response(GrantOutput(grant).data)

    @extend_schema(responses={204: None}, summary="Revoke a grant")
    def delete(self, request, name: str, grant_id: int):
        service = selectors.service_get(user=request.user, name=name)
        services.grant_revoke(actor=request.user, grant=selectors.grant_get(service=service, grant_id=grant_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


# ---------------------------------------------------------------- access requests


class ServiceAccessRequestApi(APIView):
    # A consumer's invoke-only token may ask for access to another service.
    token_scopes = {"POST": ("write", "invoke")}

    class AccessRequestInput(StrictSerializer):
        reason = serializers.CharField(max_length=1000, help_text="What will call the service, and why.")
        service_account = serializers.CharField(
            required=False, help_text="Ask for a service account you look after instead of for yourself."
        )
        expires_at = ExpiryField(required=False, allow_null=True, help_text="When the access should end.")
        days = serializers.IntegerField(
            required=False, min_value=1, max_value=3650, help_text="Or: for how many days (from now)."
        )

    @extend_schema(
        request=AccessRequestInput,
        responses={201: AccessRequestOutput},
        summary="Ask the owning team for the right to call a service (any signed-in user)",
    )
    def post(self, request, name: str):
        service = selectors.catalog_get(name=name)
        serializer = self.AccessRequestInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if data.get("expires_at") and "days" in data:
            raise InvalidInput("Give expires_at or days, not both.", field="days")
        expires_at = data.get("expires_at")
        if "days" in data:
            expires_at = timezone.now() + timedelta(days=data["days"])
        account = None
        if data.get("service_account"):
            account = account_selectors.user_get(username=data["service_account"], field="service_account")
        created = services.access_request_create(
            actor=request.user, service=service, reason=data["reason"], service_account=account, expires_at=expires_at
        )
        return Response(AccessRequestOutput(created).data, status=status.HTTP_201_CREATED)


class AccessRequestListApi(APIView):
    pagination_class = Pagination  # the schema documents the list as paginated

    @extend_schema(
        parameters=[
            OpenApiParameter("status", str, enum=AccessRequest.Status.values, description="Only this status"),
            OpenApiParameter("service", str, description="Only requests to this service"),
            OpenApiParameter("mine", bool, description="Only the requests you made"),
            OpenApiParameter("to_decide", bool, description="Only requests you may decide"),
        ],
        responses=AccessRequestOutput(many=True),
        summary="Access requests you made or may decide, newest first",
    )
    def get(self, request):
        params = request.query_params
        found = selectors.access_request_list(
            user=request.user,
            status=params.get("status", "").strip(),
            service=params.get("service", "").strip(),
            mine=_flag(params, "mine"),
            to_decide=_flag(params, "to_decide"),
        )
        paginator = Pagination()
        page = paginator.paginate_queryset(found, request, view=self)
        return paginator.get_paginated_response(AccessRequestOutput(page, many=True).data)


def _flag(params, name: str) -> bool:
    value = params.get(name, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise InvalidInput(f"{name} is true or false.", field=name)


class AccessRequestDetailApi(APIView):
    @extend_schema(responses=AccessRequestOutput, summary="An access request you made or may decide")
    def get(self, request, request_id: int):
        return Response(
            AccessRequestOutput(selectors.access_request_get(user=request.user, request_id=request_id)).data
        )


class AccessRequestApproveApi(APIView):
    class ApproveInput(StrictSerializer):
        comment = serializers.CharField(required=False, allow_blank=True, default="", max_length=1000)
        expires_at = ExpiryField(
            required=False,
            allow_null=True,
            help_text="When the grant ends: overrides what the requester asked for; null for never.",
        )

    @extend_schema(
        request=ApproveInput,
        responses=AccessRequestOutput,
        summary="Approve: the requester or their service account gets a grant (owners and maintainers)",
    )
    def post(self, request, request_id: int):
        found = selectors.access_request_get(user=request.user, request_id=request_id)
        serializer = self.ApproveInput(data=request.data if request.data else {})
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        decided = services.access_request_approve(
            actor=request.user,
            access_request=found,
            comment=data["comment"],
            expires_at=data.get("expires_at", services.UNCHANGED),
        )
        return Response(AccessRequestOutput(decided).data)


class AccessRequestRejectApi(APIView):
    class RejectInput(StrictSerializer):
        comment = serializers.CharField(max_length=1000, help_text="Why: the requester reads it.")

    @extend_schema(request=RejectInput, responses=AccessRequestOutput, summary="Reject with a comment")
    def post(self, request, request_id: int):
        found = selectors.access_request_get(user=request.user, request_id=request_id)
        serializer = self.RejectInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        decided = services.access_request_reject(
            actor=request.user, access_request=found, comment=serializer.validated_data["comment"]
        )
        return Response(AccessRequestOutput(decided).data)


class AccessRequestWithdrawApi(APIView):
    token_scopes = {"POST": ("write", "invoke")}

    @extend_schema(request=None, responses=AccessRequestOutput, summary="Withdraw your pending request")
    def post(self, request, request_id: int):
        found = selectors.access_request_get(user=request.user, request_id=request_id)
        return Response(
            AccessRequestOutput(services.access_request_withdraw(actor=request.user, access_request=found)).data
        )


class DeprecationApi(APIView):
    class DeprecateInput(StrictSerializer):
        sunset = SunsetField(
            required=False,
            allow_null=True,
            default=None,
            help_text="When this major stops being served (a date or a date and time); sent as the Sunset header.",
        )
        note = serializers.CharField(required=False, allow_blank=True, default="", max_length=500)

    @extend_schema(
        request=DeprecateInput,
        responses=DeprecationOutput,
        summary="Deprecate a major version: the gateway answers its calls with Deprecation and Sunset headers",
    )
    def put(self, request, name: str, major: int):
        service = selectors.service_get(user=request.user, name=name)
        serializer = self.DeprecateInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        deprecation = services.major_deprecate(
            actor=request.user, service=service, major=major, sunset_at=data["sunset"], note=data["note"]
        )
        return Response(DeprecationOutput(deprecation).data)

    @extend_schema(responses={204: None}, summary="Take a deprecation back")
    def delete(self, request, name: str, major: int):
        service = selectors.service_get(user=request.user, name=name)
        if not services.major_undeprecate(actor=request.user, service=service, major=major):
            raise NotFound(f"v{major} of '{service.name}' is not deprecated.")
        return Response(status=status.HTTP_204_NO_CONTENT)


class PredictionLoggingOutput(serializers.Serializer):
    environment = serializers.CharField(source="environment.name")
    enabled = serializers.BooleanField()
    sample_rate = serializers.FloatField()
    keep_payloads = serializers.BooleanField()
    retention_days = serializers.IntegerField()
    default = serializers.SerializerMethodField(help_text="True while the portal's defaults apply (nothing set yet).")

    def get_default(self, policy) -> bool:
        return policy.pk is None


class PredictionLoggingApi(APIView):
    class LoggingInput(StrictSerializer):
        enabled = serializers.BooleanField(required=False)
        sample_rate = serializers.FloatField(required=False, min_value=0.0, max_value=1.0)
        keep_payloads = serializers.BooleanField(required=False)
        retention_days = serializers.IntegerField(required=False, min_value=1, max_value=3650)

    @extend_schema(
        responses=PredictionLoggingOutput, summary="How a service's predictions are logged in an environment"
    )
    def get(self, request, name: str, environment: str):
        service = selectors.service_get(user=request.user, name=name)
        policy = PredictionLogging.effective(service, selectors.environment_get(name=environment))
        return Response(PredictionLoggingOutput(policy).data)

    @extend_schema(
        request=LoggingInput,
        responses=PredictionLoggingOutput,
        summary="Change how a service's predictions are logged in an environment (owners and maintainers)",
    )
    def patch(self, request, name: str, environment: str):
        service = selectors.service_get(user=request.user, name=name)
        serializer = self.LoggingInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        policy = services.prediction_logging_set(
            actor=request.user,
            service=service,
            environment=selectors.environment_get(name=environment),
            **serializer.validated_data,
        )
        return Response(PredictionLoggingOutput(policy).data)


# ---------------------------------------------------------------- deployments


class ServiceDeploymentListApi(APIView):
    pagination_class = Pagination  # the schema documents the list as paginated

    class DeploymentRequestInput(StrictSerializer):
        version = VersionField()
        environment = serializers.CharField(max_length=40)
        replicas = documented(serializers.IntegerField(required=False, default=1), minimum=1)
        reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=500)
        target_in_flight = serializers.IntegerField(
            required=False,
            help_text="Turns autoscaling on: requests in flight per instance to aim for.",
        )
        min_replicas = serializers.IntegerField(required=False, help_text="Autoscaling: the fewest instances (1).")
        max_replicas = serializers.IntegerField(
            required=False, help_text="Autoscaling: the most instances (the environment's max_replicas)."
        )
        scale_down_after_seconds = serializers.IntegerField(
            required=False, help_text="Autoscaling: how long demand must stay lower before scaling down (60)."
        )
        strategy = serializers.ChoiceField(
            choices=Strategy.choices,
            required=False,
            default=Strategy.BLUE_GREEN,
            help_text="blue_green (switch at once), canary (steps of traffic) or shadow (copies of traffic).",
        )
        steps = serializers.ListField(
            child=serializers.FloatField(),
            required=False,
            help_text="Canary: increasing percents of traffic, e.g. [5, 25, 50] (100 is added at the end).",
        )
        bake_seconds = serializers.IntegerField(required=False, help_text="Canary: seconds each step runs (300).")
        shadow_percent = serializers.IntegerField(
            required=False, help_text="Shadow: percent of live requests copied to the candidate (10)."
        )
        sticky = serializers.BooleanField(required=False, help_text="Canary: one caller sees one version.")

    @extend_schema(responses=DeploymentOutput(many=True), summary="Deployments of a service, newest first")
    def get(self, request, name: str):
        service = selectors.service_get(user=request.user, name=name)
        paginator = Pagination()
        page = paginator.paginate_queryset(
            selectors.deployment_list(user=request.user, service=service), request, view=self
        )
        return paginator.get_paginated_response(DeploymentOutput(page, many=True).data)

    @extend_schema(request=DeploymentRequestInput, responses={201: DeploymentOutput}, summary="Request a deployment")
    def post(self, request, name: str):
        service = selectors.service_get(user=request.user, name=name)
        serializer = self.DeploymentRequestInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            version = registry_selectors.version_get(model=service.model, version=data["version"])
        except NotFound as exc:
            raise InvalidInput(exc.message, field="version") from None
        try:
            environment = selectors.environment_get(name=data["environment"])
        except NotFound as exc:
            raise InvalidInput(exc.message, field="environment") from None
        deployment = services.deployment_request(
            actor=request.user,
            service=service,
            version=version,
            environment=environment,
            replicas=data["replicas"],
            reason=data["reason"],
            autoscaling=_autoscaling(data, environment),
            rollout=services.Rollout(
                strategy=data["strategy"],
                steps=tuple(data["steps"]) if "steps" in data else None,
                bake_seconds=data.get("bake_seconds"),
                shadow_percent=data.get("shadow_percent"),
                sticky=data.get("sticky", False),
            ),
        )
        return Response(DeploymentOutput(deployment).data, status=status.HTTP_201_CREATED)


AUTOSCALING_FIELDS = ("min_replicas", "max_replicas", "scale_down_after_seconds")


def _autoscaling(data: dict, environment) -> services.Autoscaling | None:
    if "target_in_flight" not in data:
        given = [name for name in AUTOSCALING_FIELDS if name in data]
        if given:
            raise InvalidInput(
                f"{given[0]} is an autoscaling setting: set target_in_flight too to turn autoscaling on.",
                field="target_in_flight",
            )
        return None
    return services.Autoscaling(
        min_replicas=data.get("min_replicas", 1),
        max_replicas=data.get("max_replicas", environment.max_replicas),
        target_in_flight=data["target_in_flight"],
        scale_down_after_seconds=data.get("scale_down_after_seconds", 60),
    )


class DeploymentDetailApi(APIView):
    class ScaleInput(StrictSerializer):
        replicas = documented(serializers.IntegerField(), minimum=1)

    @extend_schema(responses=DeploymentDetailOutput, summary="A deployment, its instances and its events")
    def get(self, request, deployment_id: int):
        return Response(
            DeploymentDetailOutput(selectors.deployment_get(user=request.user, deployment_id=deployment_id)).data
        )

    @extend_schema(request=ScaleInput, responses=DeploymentOutput, summary="Change the replicas of a live deployment")
    def patch(self, request, deployment_id: int):
        deployment = selectors.deployment_get(user=request.user, deployment_id=deployment_id)
        serializer = self.ScaleInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        deployment = services.deployment_scale(actor=request.user, deployment=deployment, **serializer.validated_data)
        return Response(DeploymentOutput(deployment).data)


class InstanceLogOutput(InstanceOutput):
    logs = serializers.CharField()


class DeploymentLogsApi(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("tail", int, description="Lines per instance (default 200, at most 5000)")],
        responses=InstanceLogOutput(many=True),
        summary="The last lines each instance of a deployment wrote",
    )
    def get(self, request, deployment_id: int):
        deployment = selectors.deployment_get(user=request.user, deployment_id=deployment_id)
        tail = request.query_params.get("tail", "200")
        if not re.fullmatch(r"[0-9]{1,4}", tail) or not 1 <= int(tail) <= 5000:
            raise InvalidInput("tail must be a whole number from 1 to 5000.", field="tail")
        logs = selectors.deployment_logs(deployment=deployment, tail=int(tail))
        return Response([{**InstanceOutput(instance).data, "logs": text} for instance, text in logs])


class _DecisionApi(APIView):
    class CommentInput(StrictSerializer):
        comment = serializers.CharField(required=False, allow_blank=True, default="", max_length=1000)

    action = ""

    def post(self, request, deployment_id: int):
        deployment = selectors.deployment_get(user=request.user, deployment_id=deployment_id)
        serializer = self.CommentInput(data=request.data if request.data else {})
        serializer.is_valid(raise_exception=True)
        comment = serializer.validated_data["comment"]
        if self.action == "approve":
            services.deployment_approve(actor=request.user, deployment=deployment, comment=comment)
        elif self.action == "reject":
            services.deployment_reject(actor=request.user, deployment=deployment, comment=comment)
        elif self.action == "cancel":
            services.deployment_cancel(actor=request.user, deployment=deployment)
        else:
            deployment = services.deployment_rollback(actor=request.user, deployment=deployment)
            return Response(DeploymentOutput(deployment).data, status=status.HTTP_201_CREATED)
        deployment.refresh_from_db()
        return Response(DeploymentOutput(deployment).data)


class DeploymentApproveApi(_DecisionApi):
    action = "approve"

    @extend_schema(request=_DecisionApi.CommentInput, responses=DeploymentOutput, summary="Approve (IT approvers)")
    def post(self, request, deployment_id: int):
        return super().post(request, deployment_id)


class DeploymentRejectApi(_DecisionApi):
    action = "reject"

    @extend_schema(request=_DecisionApi.CommentInput, responses=DeploymentOutput, summary="Reject with a comment")
    def post(self, request, deployment_id: int):
        return super().post(request, deployment_id)


class DeploymentCancelApi(_DecisionApi):
    action = "cancel"

    @extend_schema(request=None, responses=DeploymentOutput, summary="Cancel a deployment that has not started")
    def post(self, request, deployment_id: int):
        return super().post(request, deployment_id)


class DeploymentRollbackApi(_DecisionApi):
    action = "rollback"

    @extend_schema(request=None, responses={201: DeploymentOutput}, summary="Roll back to the previously live version")
    def post(self, request, deployment_id: int):
        return super().post(request, deployment_id)


class _CandidateActionApi(APIView):
    """Pause, resume, promote or abort a canary or shadow (whoever may deploy the service)."""

    action = ""

    def post(self, request, deployment_id: int):
        deployment = selectors.deployment_get(user=request.user, deployment_id=deployment_id)
        act = {
            "pause": services.deployment_pause,
            "resume": services.deployment_resume,
            "promote": services.deployment_promote,
            "abort": services.deployment_abort,
        }[self.action]
        act(actor=request.user, deployment=deployment)
        deployment.refresh_from_db()
        return Response(DeploymentOutput(deployment).data)


class DeploymentPauseApi(_CandidateActionApi):
    action = "pause"

    @extend_schema(
        request=None,
        responses=DeploymentOutput,
        summary="Pause a canary or shadow at its step (409 when it is not one, or already paused)",
    )
    def post(self, request, deployment_id: int):
        return super().post(request, deployment_id)


class DeploymentResumeApi(_CandidateActionApi):
    action = "resume"

    @extend_schema(request=None, responses=DeploymentOutput, summary="Resume a paused canary or shadow")
    def post(self, request, deployment_id: int):
        return super().post(request, deployment_id)


class DeploymentPromoteApi(_CandidateActionApi):
    action = "promote"

    @extend_schema(
        request=None,
        responses=DeploymentOutput,
        summary="Promote a canary or shadow now: it goes live, the old version drains and stops",
    )
    def post(self, request, deployment_id: int):
        return super().post(request, deployment_id)


class DeploymentAbortApi(_CandidateActionApi):
    action = "abort"

    @extend_schema(
        request=None,
        responses=DeploymentOutput,
        summary="Abort a canary or shadow: back to 0 %, the live version keeps serving",
    )
    def post(self, request, deployment_id: int):
        return super().post(request, deployment_id)


class ApprovalQueueApi(APIView):
    @extend_schema(responses=DeploymentOutput(many=True), summary="Deployments waiting for approval (approvers)")
    def get(self, request):
        return Response(DeploymentOutput(selectors.approval_queue(user=request.user), many=True).data)


# ---------------------------------------------------------------- usage per consumer, against its limits


class ConsumerUsageOutput(serializers.Serializer):
    grant = serializers.IntegerField(source="grant.pk", help_text="The grant the requests count against.")
    user = serializers.CharField(source="grant.user.username", allow_null=True, default=None)
    team = serializers.CharField(
        source="grant.team.name", allow_null=True, default=None, help_text="A team's limits are shared by its members."
    )
    requests_today = serializers.IntegerField(
        source="requests", allow_null=True, help_text="Admitted since 00:00 UTC; null when the counts cannot be read."
    )
    refused_today = serializers.IntegerField(
        source="refused", allow_null=True, help_text="Refused with 429 (rate limit or quota) since 00:00 UTC."
    )
    daily_quota = serializers.IntegerField(source="grant.daily_quota", allow_null=True)
    quota_remaining = serializers.IntegerField(allow_null=True)
    rate_per_second = serializers.FloatField(source="grant.rate_per_second", allow_null=True)
    burst = serializers.FloatField(
        allow_null=True, help_text="Requests at once above the rate: the grant's, or else one second of the rate."
    )


class ServiceUsageOutput(serializers.Serializer):
    service = serializers.CharField()
    day = serializers.DateField(help_text="The UTC day counted.")
    resets_at = serializers.DateTimeField(help_text="When daily quotas start again (00:00 UTC).")
    consumers = ConsumerUsageOutput(many=True)


class ServiceUsageApi(APIView):
    @extend_schema(
        responses=ServiceUsageOutput,
        summary="Today's requests per consumer (grant) against its daily quota and rate limit",
    )
    def get(self, request, name: str):
        service = selectors.service_get(user=request.user, name=name)
        today = datetime.now(UTC).date()
        return Response(
            ServiceUsageOutput(
                {
                    "service": service.name,
                    "day": today,
                    "resets_at": datetime.combine(today + timedelta(days=1), datetime.min.time(), UTC),
                    "consumers": selectors.consumer_usage(service=service),
                }
            ).data
        )
