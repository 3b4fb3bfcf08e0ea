"""Monitoring over the API: the prediction log, ground truth, live quality, drift, alerts,
webhooks and each person's notification emails."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import TokenScope
from core.rest import Pagination, StrictSerializer
from deployments import selectors as deployment_selectors
from monitoring import selectors, services
from monitoring.models import AlertRule, AlertState, DeliveryState, DriftThresholds, EventType, Metric


class PredictionOutput(serializers.Serializer):
    id = serializers.CharField(help_text="The prediction id the caller got back (X-Prediction-Id).")
    ts = serializers.DateTimeField()
    version = serializers.CharField()
    status = serializers.IntegerField(help_text="The HTTP status the caller got.")
    latency_ms = serializers.FloatField()
    instances = serializers.IntegerField()
    inputs = serializers.CharField(allow_null=True, help_text="The request body, when payloads are kept.")
    outputs = serializers.CharField(allow_null=True, help_text="The answer, when payloads are kept.")


class PredictionListApi(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("environment", str, required=True),
            OpenApiParameter("limit", int, description=f"At most {selectors.MAX_LIMIT}; 50 by default."),
            OpenApiParameter("before", str, description="Only predictions logged before this time (ISO 8601)."),
        ],
        responses=PredictionOutput(many=True),
        summary="A service's latest logged predictions in an environment, newest first",
    )
    def get(self, request, name: str):
        query = self.Query(data=request.query_params)
        query.is_valid(raise_exception=True)
        rows = selectors.predictions_recent(user=request.user, service=name, **query.validated_data)
        return Response(PredictionOutput(rows, many=True).data)

    class Query(serializers.Serializer):
        environment = serializers.CharField(max_length=40)
        limit = serializers.IntegerField(required=False, default=50, min_value=1, max_value=selectors.MAX_LIMIT)
        before = serializers.DateTimeField(required=False)


class FeedbackItem(serializers.Serializer):
    prediction_id = serializers.CharField(help_text="The id the gateway gave the prediction (X-Prediction-Id).")
    actual = serializers.JSONField(help_text="What really happened: a label, a number, or one per instance.")


class FeedbackResultOutput(serializers.Serializer):
    accepted = serializers.IntegerField(help_text="Outcomes kept (an id sent again replaces its earlier outcome).")
    pending = serializers.ListField(
        child=serializers.CharField(), help_text="Recent ids not in the log yet: kept, joined once they arrive."
    )
    unknown = serializers.ListField(
        child=serializers.CharField(), help_text="Ids that are not predictions of this service: not kept."
    )


class FeedbackApi(APIView):
    # A consumer's token (invoke) may send the outcomes of its own calls.
    token_scopes = {"POST": (TokenScope.WRITE, TokenScope.INVOKE)}

    @extend_schema(
        request=FeedbackItem(many=True),
        responses=FeedbackResultOutput,
        summary="Send ground truth for logged predictions (those granted on the service, or its team)",
    )
    def post(self, request, name: str):
        service = selectors.feedback_service_get(user=request.user, name=name)
        result = services.feedback_record(actor=request.user, service=service, items=request.data)
        return Response(FeedbackResultOutput(result).data)


class VersionQualityOutput(serializers.Serializer):
    version = serializers.CharField()
    task = serializers.CharField(help_text="classification, regression, or empty (not measured).")
    labelled = serializers.IntegerField(help_text="Labelled predictions (instances) behind the metrics.")
    metrics = serializers.DictField(child=serializers.FloatField(), help_text="Live metrics over the window.")
    registered = serializers.DictField(child=serializers.FloatField(), help_text="Metrics recorded at registration.")
    labels = serializers.ListField(child=serializers.CharField())
    confusion = serializers.ListField(
        child=serializers.ListField(child=serializers.IntegerField()), help_text="Rows: actual; columns: predicted."
    )
    unusable = serializers.IntegerField(help_text="Outcomes that did not line up with their prediction.")


class QualityApi(APIView):
    class Query(serializers.Serializer):
        environment = serializers.CharField(max_length=40)
        days = serializers.IntegerField(required=False, default=7, min_value=1, max_value=selectors.MAX_DAYS)

    @extend_schema(
        parameters=[
            OpenApiParameter("environment", str, required=True),
            OpenApiParameter(
                "days", int, description=f"The window, in days up to now (7 by default, at most {selectors.MAX_DAYS})."
            ),
        ],
        responses=VersionQualityOutput(many=True),
        summary="Each version's live quality from logged predictions and their ground truth",
    )
    def get(self, request, name: str):
        query = self.Query(data=request.query_params)
        query.is_valid(raise_exception=True)
        rows = selectors.quality_by_version(user=request.user, service=name, **query.validated_data)
        return Response(VersionQualityOutput(rows, many=True).data)


# ---------------------------------------------------------------- performance overview


class OverviewOutput(serializers.Serializer):
    days = serializers.IntegerField()
    bucket_hours = serializers.IntegerField()
    starts = serializers.ListField(child=serializers.DateTimeField(), help_text="Each bucket's start.")
    versions = serializers.ListField(child=serializers.CharField())
    volume = serializers.DictField(
        child=serializers.ListField(child=serializers.IntegerField()),
        help_text="Per version, the logged predictions in each bucket.",
    )
    metric_name = serializers.CharField(help_text="The live metric charted: accuracy or rmse (empty: none).")
    metric = serializers.DictField(
        child=serializers.ListField(child=serializers.FloatField(allow_null=True)),
        help_text="Per version, the live metric in each bucket (null: no labelled predictions).",
    )
    quality = VersionQualityOutput(many=True)


class OverviewApi(APIView):
    class Query(serializers.Serializer):
        environment = serializers.CharField(max_length=40)
        days = serializers.ChoiceField(choices=sorted(selectors.BUCKET_HOURS), required=False, default=7)

    @extend_schema(
        parameters=[
            OpenApiParameter("environment", str, required=True),
            OpenApiParameter("days", int, description="1, 7 (default), 30 or 90: hourly, 6-hourly, daily, 3-daily."),
        ],
        responses=OverviewOutput,
        summary="Volume and live metric per version over time, and each version's quality over the window",
    )
    def get(self, request, name: str):
        query = self.Query(data=request.query_params)
        query.is_valid(raise_exception=True)
        overview = selectors.performance_overview(user=request.user, service=name, **query.validated_data)
        return Response(OverviewOutput(overview).data)


# ---------------------------------------------------------------- drift


class DriftScoreOutput(serializers.Serializer):
    version = serializers.CharField()
    feature = serializers.CharField()
    hour = serializers.DateTimeField(help_text="The hour scored (the current one is rescored until it ends).")
    count = serializers.IntegerField(help_text="Instances scored.")
    psi = serializers.FloatField(allow_null=True, help_text="Population stability index against the reference.")
    missing_rate = serializers.FloatField()
    out_of_range_rate = serializers.FloatField()
    reference_rows = serializers.IntegerField()


class DriftApi(APIView):
    pagination_class = Pagination  # the schema documents the list as paginated

    class Query(serializers.Serializer):
        environment = serializers.CharField(max_length=40)
        hours = serializers.IntegerField(required=False, default=24, min_value=1, max_value=24 * selectors.MAX_DAYS)
        version = serializers.CharField(required=False, default="", max_length=40)
        feature = serializers.CharField(required=False, default="", max_length=200)

    @extend_schema(
        parameters=[
            OpenApiParameter("environment", str, required=True),
            OpenApiParameter("hours", int, description="How many hours back (24 by default)."),
            OpenApiParameter("version", str, description="Only this version's scores."),
            OpenApiParameter("feature", str, description="Only this feature's scores."),
            OpenApiParameter("page", int),
            OpenApiParameter("page_size", int, description="Up to 200; 50 by default."),
        ],
        responses=DriftScoreOutput(many=True),
        summary="Each input feature's drift per version and hour, oldest first (paginated)",
    )
    def get(self, request, name: str):
        query = self.Query(data=request.query_params)
        query.is_valid(raise_exception=True)
        scores = selectors.drift_scores(user=request.user, service=name, **query.validated_data)
        paginator = Pagination()
        page = paginator.paginate_queryset(scores, request, view=self)
        return paginator.get_paginated_response(DriftScoreOutput(page, many=True).data)


class ThresholdsSerializer(StrictSerializer):
    psi_warn = serializers.FloatField(required=False, min_value=0, help_text="PSI shown as drifting (0.1).")
    psi_alert = serializers.FloatField(required=False, min_value=0, help_text="PSI of a significant drift (0.25).")
    missing_rate = serializers.FloatField(required=False, min_value=0, max_value=1)
    out_of_range_rate = serializers.FloatField(required=False, min_value=0, max_value=1)


class DriftThresholdsApi(APIView):
    @extend_schema(responses=ThresholdsSerializer, summary="A service's drift thresholds")
    def get(self, request, name: str):
        service = deployment_selectors.service_get(user=request.user, name=name)
        return Response(ThresholdsSerializer(DriftThresholds.effective(service)).data)

    @extend_schema(request=ThresholdsSerializer, responses=ThresholdsSerializer, summary="Change drift thresholds")
    def patch(self, request, name: str):
        service = deployment_selectors.service_get(user=request.user, name=name)
        serializer = ThresholdsSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        thresholds = services.drift_thresholds_set(actor=request.user, service=service, **serializer.validated_data)
        return Response(ThresholdsSerializer(thresholds).data)


# ---------------------------------------------------------------- alerts


class AlertRuleOutput(serializers.Serializer):
    id = serializers.IntegerField()
    service = serializers.CharField(source="service.name")
    environment = serializers.CharField(source="environment.name")
    metric = serializers.ChoiceField(choices=Metric.choices)
    fires = serializers.SerializerMethodField(help_text="below or above the threshold")
    threshold = serializers.FloatField()
    window_minutes = serializers.IntegerField()
    min_samples = serializers.IntegerField()
    enabled = serializers.BooleanField()
    condition = serializers.CharField()
    state = serializers.ChoiceField(choices=AlertState.choices)
    value = serializers.FloatField(allow_null=True)
    detail = serializers.CharField()
    evaluated_at = serializers.DateTimeField(allow_null=True)
    changed_at = serializers.DateTimeField(allow_null=True)

    def get_fires(self, rule: AlertRule) -> str:
        return "below" if rule.fires_below else "above"


class AlertRuleCreateInput(StrictSerializer):
    environment = serializers.CharField(max_length=40)
    metric = serializers.ChoiceField(choices=Metric.choices)
    threshold = serializers.FloatField()
    window_minutes = serializers.IntegerField(required=False, default=60)
    min_samples = serializers.IntegerField(required=False, default=50)
    enabled = serializers.BooleanField(required=False, default=True)


class AlertRuleUpdateInput(StrictSerializer):
    threshold = serializers.FloatField(required=False)
    window_minutes = serializers.IntegerField(required=False)
    min_samples = serializers.IntegerField(required=False)
    enabled = serializers.BooleanField(required=False)


class AlertRuleListApi(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("environment", str, description="Only this environment's rules.")],
        responses=AlertRuleOutput(many=True),
        summary="A service's alert rules and their states",
    )
    def get(self, request, name: str):
        rules = selectors.alert_rules(
            user=request.user, service=name, environment=request.query_params.get("environment") or None
        )
        return Response(AlertRuleOutput(rules, many=True).data)

    @extend_schema(
        request=AlertRuleCreateInput,
        responses={201: AlertRuleOutput},
        summary="Add an alert rule (owners and maintainers; audited)",
    )
    def post(self, request, name: str):
        service = deployment_selectors.service_get(user=request.user, name=name)
        serializer = AlertRuleCreateInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        environment = selectors.environment_named(data.pop("environment"))
        rule = services.alert_rule_create(actor=request.user, service=service, environment=environment, **data)
        return Response(AlertRuleOutput(rule).data, status=status.HTTP_201_CREATED)


class AlertRuleDetailApi(APIView):
    @extend_schema(responses=AlertRuleOutput, summary="An alert rule")
    def get(self, request, rule_id: int):
        return Response(AlertRuleOutput(selectors.alert_rule_get(user=request.user, rule_id=rule_id)).data)

    @extend_schema(request=AlertRuleUpdateInput, responses=AlertRuleOutput, summary="Change an alert rule (audited)")
    def patch(self, request, rule_id: int):
        rule = selectors.alert_rule_get(user=request.user, rule_id=rule_id)
        serializer = AlertRuleUpdateInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        rule = services.alert_rule_update(actor=request.user, rule=rule, **serializer.validated_data)
        return Response(AlertRuleOutput(rule).data)

    @extend_schema(responses={204: None}, summary="Delete an alert rule (audited)")
    def delete(self, request, rule_id: int):
        rule = selectors.alert_rule_get(user=request.user, rule_id=rule_id)
        services.alert_rule_delete(actor=request.user, rule=rule)
        return Response(status=status.HTTP_204_NO_CONTENT)


class AlertEventOutput(serializers.Serializer):
    id = serializers.IntegerField()
    rule = serializers.IntegerField(source="rule_id", allow_null=True, help_text="Null once the rule is deleted.")
    environment = serializers.CharField(source="environment.name")
    state = serializers.ChoiceField(choices=["fired", "cleared"])
    value = serializers.FloatField(allow_null=True)
    message = serializers.CharField()
    emailed = serializers.IntegerField(help_text="How many people the email went to.")
    created_at = serializers.DateTimeField()


class AlertEventListApi(APIView):
    pagination_class = Pagination  # the schema documents the list as paginated

    @extend_schema(
        parameters=[OpenApiParameter("environment", str, description="Only this environment's alerts.")],
        responses=AlertEventOutput(many=True),
        summary="When a service's alert rules fired and cleared, newest first (paginated)",
    )
    def get(self, request, name: str):
        events = selectors.alert_events(
            user=request.user, service=name, environment=request.query_params.get("environment") or None
        )
        paginator = Pagination()
        page = paginator.paginate_queryset(events, request, view=self)
        return paginator.get_paginated_response(AlertEventOutput(page, many=True).data)


EVENTS_HELP = "Event types: " + ", ".join(EventType.values) + "."


class WebhookOutput(serializers.Serializer):
    id = serializers.IntegerField()
    url = serializers.URLField()
    events = serializers.ListField(child=serializers.ChoiceField(choices=EventType.choices), help_text=EVENTS_HELP)
    active = serializers.BooleanField()
    created_at = serializers.DateTimeField()


class WebhookCreatedOutput(WebhookOutput):
    secret = serializers.CharField(help_text="Signs every delivery (X-Portal-Signature). Shown this once.")


class WebhookCreateInput(StrictSerializer):
    url = serializers.CharField(max_length=500, help_text="An http:// or https:// address that accepts POST.")
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=EventType.choices),
        required=False,
        allow_empty=False,
        help_text="What to send here; every event type when left out. " + EVENTS_HELP,
    )


class WebhookListApi(APIView):
    @extend_schema(responses=WebhookOutput(many=True), summary="A service's webhooks (owners and maintainers)")
    def get(self, request, name: str):
        service = deployment_selectors.service_get(user=request.user, name=name)
        return Response(WebhookOutput(selectors.webhooks(user=request.user, service=service), many=True).data)

    @extend_schema(
        request=WebhookCreateInput,
        responses={201: WebhookCreatedOutput},
        summary="Add a webhook for some or all of the service's events; the signing secret is shown once",
    )
    def post(self, request, name: str):
        service = deployment_selectors.service_get(user=request.user, name=name)
        serializer = WebhookCreateInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        hook = services.webhook_create(actor=request.user, service=service, **serializer.validated_data)
        return Response(WebhookCreatedOutput(hook).data, status=status.HTTP_201_CREATED)


class WebhookUpdateInput(StrictSerializer):
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=EventType.choices),
        allow_empty=False,
        help_text="What to send here from now on. " + EVENTS_HELP,
    )


class WebhookDetailApi(APIView):
    @extend_schema(
        request=WebhookUpdateInput,
        responses=WebhookOutput,
        summary="Change the events a webhook is sent (its address and secret stay; audited)",
    )
    def patch(self, request, webhook_id: int):
        hook = selectors.webhook_get(user=request.user, webhook_id=webhook_id)
        serializer = WebhookUpdateInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        hook = services.webhook_update(actor=request.user, webhook=hook, **serializer.validated_data)
        return Response(WebhookOutput(hook).data)

    @extend_schema(responses={204: None}, summary="Remove a webhook (audited)")
    def delete(self, request, webhook_id: int):
        hook = selectors.webhook_get(user=request.user, webhook_id=webhook_id)
        services.webhook_delete(actor=request.user, webhook=hook)
        return Response(status=status.HTTP_204_NO_CONTENT)


class DeliveryOutput(serializers.Serializer):
    id = serializers.IntegerField()
    event_type = serializers.ChoiceField(choices=EventType.choices, help_text="What it tells (X-Portal-Event).")
    event = serializers.IntegerField(source="event_id", allow_null=True, help_text="The alert event, for alerts.")
    notification = serializers.IntegerField(
        source="notification_id", allow_null=True, help_text="The notification, for every other event."
    )
    state = serializers.ChoiceField(choices=DeliveryState.choices)
    attempts = serializers.IntegerField()
    response_status = serializers.IntegerField(allow_null=True)
    error = serializers.CharField()
    created_at = serializers.DateTimeField()
    last_attempt_at = serializers.DateTimeField(allow_null=True)
    next_attempt_at = serializers.DateTimeField(allow_null=True)


class WebhookDeliveryListApi(APIView):
    pagination_class = Pagination  # the schema documents the list as paginated

    @extend_schema(responses=DeliveryOutput(many=True), summary="A webhook's deliveries, newest first (paginated)")
    def get(self, request, webhook_id: int):
        hook = selectors.webhook_get(user=request.user, webhook_id=webhook_id)
        paginator = Pagination()
        page = paginator.paginate_queryset(selectors.webhook_deliveries(webhook=hook), request, view=self)
        return paginator.get_paginated_response(DeliveryOutput(page, many=True).data)


class NotificationPreferencesOutput(serializers.Serializer):
    email = serializers.DictField(
        child=serializers.BooleanField(),
        help_text="Each event type and whether you get its email (on unless turned off). " + EVENTS_HELP,
    )


class NotificationPreferencesInput(StrictSerializer):
    email = serializers.DictField(
        child=serializers.BooleanField(),
        allow_empty=False,
        help_text="Event types to turn on (true) or off (false); types not named keep their setting.",
    )


class NotificationPreferencesApi(APIView):
    @extend_schema(responses=NotificationPreferencesOutput, summary="Which notification emails you get")
    def get(self, request):
        return Response({"email": selectors.notification_preferences(user=request.user)})

    @extend_schema(
        request=NotificationPreferencesInput,
        responses=NotificationPreferencesOutput,
        summary="Turn notification emails on or off, by event type",
    )
    def put(self, request):
        serializer = NotificationPreferencesInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        choices = services.notification_preferences_set(actor=request.user, email=serializer.validated_data["email"])
        return Response({"email": choices})
