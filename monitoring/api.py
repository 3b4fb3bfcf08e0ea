"""The prediction log over the API."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import TokenScope
from monitoring import selectors, services


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
