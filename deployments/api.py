"""REST API for environments, services, grants and deployments."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from django.conf import settings
from django.utils.dateparse import parse_date
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors as account_selectors
from accounts.permissions import IsAdmin, TokenScopePermission
from core.errors import InvalidInput, NotAllowed, NotFound
from core.rest import Pagination, StrictSerializer
from deployments import selectors, services
from deployments.models import (
    MAX_INSTANCES_LIMIT,
    Deployment,
    DeploymentEvent,
    Deprecation,
    Environment,
    Grant,
    PredictionLogging,
    Runtime,
    Service,
    validate_placement,
)
from registry import selectors as registry_selectors

ADMIN_ONLY = [IsAuthenticated, TokenScopePermission, IsAdmin]


# ---------------------------------------------------------------- shapes


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
        ]

    def get_endpoint(self, deployment: Deployment) -> str:
        return f"{settings.GATEWAY_URL}/serve/{deployment.route_key}/predict"


class DeploymentDetailOutput(DeploymentOutput):
    events = serializers.SerializerMethodField()
    instances = serializers.SerializerMethodField()

    class Meta(DeploymentOutput.Meta):
        fields = [*DeploymentOutput.Meta.fields, "instances", "events"]

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

    class Meta:
        model = Grant
        fields = ["id", "user", "team", "permission", "created_at", "created_by"]


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
    permission_classes = ADMIN_ONLY

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
    class ServiceCreateInput(StrictSerializer):
        name = serializers.CharField(max_length=100)
        team = serializers.CharField(max_length=64)
        model = serializers.CharField(max_length=100)
        description = serializers.CharField(required=False, allow_blank=True, default="", max_length=500)

    @extend_schema(responses=ServiceOutput(many=True), summary="Services you can see")
    def get(self, request):
        services_ = selectors.service_list(
            user=request.user,
            search=request.query_params.get("search", "").strip(),
            team=request.query_params.get("team", ""),
        )
        paginator = Pagination()
        page = paginator.paginate_queryset(services_, request, view=self)
        return paginator.get_paginated_response(ServiceOutput(page, many=True).data)

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


class GrantListApi(APIView):
    class GrantCreateInput(StrictSerializer):
        user = serializers.CharField(required=False, help_text="A user or service account")
        team = serializers.CharField(required=False)
        permission = serializers.ChoiceField(choices=[("invoke", "invoke")], default="invoke")

    @extend_schema(responses=GrantOutput(many=True), summary="Who may call the service")
    def get(self, request, name: str):
        service = selectors.service_get(user=request.user, name=name)
        return Response(GrantOutput(selectors.grant_list(service=service), many=True).data)

    @extend_schema(
        request=GrantCreateInput, responses={201: GrantOutput}, summary="Let a user or team call the service"
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
        grant = services.grant_create(actor=request.user, service=service, user=user, team=team)
        return Response(GrantOutput(grant).data, status=status.HTTP_201_CREATED)


class GrantDetailApi(APIView):
    @extend_schema(responses={204: None}, summary="Revoke a grant")
    def delete(self, request, name: str, grant_id: int):
        service = selectors.service_get(user=request.user, name=name)
        services.grant_revoke(actor=request.user, grant=selectors.grant_get(service=service, grant_id=grant_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


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
    class DeploymentRequestInput(StrictSerializer):
        version = serializers.CharField(max_length=40)
        environment = serializers.CharField(max_length=40)
        replicas = serializers.IntegerField(required=False, default=1)
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
        replicas = serializers.IntegerField()

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


class ApprovalQueueApi(APIView):
    @extend_schema(responses=DeploymentOutput(many=True), summary="Deployments waiting for approval (approvers)")
    def get(self, request):
        return Response(DeploymentOutput(selectors.approval_queue(user=request.user), many=True).data)
