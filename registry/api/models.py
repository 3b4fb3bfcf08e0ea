"""REST API of registered models: list, search, create, edit."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors as account_selectors
from core.openapi import NameField
from core.rest import Pagination, StrictSerializer
from registry import selectors, services
from registry.models import ModelVersion, RegisteredModel


class VersionSummaryOutput(serializers.ModelSerializer):
    sha256 = serializers.CharField(source="artifact.sha256")
    size = serializers.IntegerField(source="artifact.size")

    class Meta:
        model = ModelVersion
        fields = ["version", "flavor", "task", "sha256", "size", "metrics", "created_at"]


class ModelOutput(serializers.ModelSerializer):
    team = serializers.CharField(source="team.name")
    version_count = serializers.IntegerField(read_only=True)
    latest_version = serializers.SerializerMethodField()

    class Meta:
        model = RegisteredModel
        fields = ["name", "team", "description", "created_at", "version_count", "latest_version"]

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_latest_version(self, model: RegisteredModel) -> str | None:
        latest = getattr(model, "ordered", None)
        if latest is None:
            latest = list(selectors.version_list(model=model)[:1])
        return latest[0].version if latest else None


class ModelDetailOutput(ModelOutput):
    versions = serializers.SerializerMethodField()

    class Meta(ModelOutput.Meta):
        fields = [*ModelOutput.Meta.fields, "versions"]

    @extend_schema_field(VersionSummaryOutput(many=True))
    def get_versions(self, model: RegisteredModel) -> list[dict]:
        return VersionSummaryOutput(selectors.version_list(model=model), many=True).data


class ModelListApi(APIView):
    pagination_class = Pagination  # the schema documents the list as paginated

    class ModelCreateInput(StrictSerializer):
        name = NameField(max_length=100)
        team = NameField(max_length=64)
        description = serializers.CharField(required=False, allow_blank=True, default="", max_length=100_000)

    @extend_schema(
        responses=ModelOutput(many=True),
        parameters=[
            OpenApiParameter("search", str, description="Part of the name or description"),
            OpenApiParameter("team", str, description="Only this team's models"),
        ],
        summary="Models you can see",
    )
    def get(self, request):
        models = selectors.model_list(
            user=request.user,
            search=request.query_params.get("search", "").strip(),
            team=request.query_params.get("team", ""),
        )
        paginator = Pagination()
        page = paginator.paginate_queryset(selectors.models_with_latest(models=models), request, view=self)
        return paginator.get_paginated_response(ModelOutput(page, many=True).data)

    @extend_schema(request=ModelCreateInput, responses={201: ModelDetailOutput}, summary="Register a model")
    def post(self, request):
        serializer = self.ModelCreateInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        team = account_selectors.team_get(user=request.user, name=data["team"])
        model = services.registered_model_create(
            actor=request.user, name=data["name"], team=team, description=data["description"]
        )
        model = selectors.model_get(user=request.user, name=model.name)
        return Response(ModelDetailOutput(model).data, status=status.HTTP_201_CREATED)


class ModelDetailApi(APIView):
    class ModelUpdateInput(StrictSerializer):
        description = serializers.CharField(allow_blank=True, max_length=100_000)

    @extend_schema(responses=ModelDetailOutput, summary="A model and its versions")
    def get(self, request, name: str):
        return Response(ModelDetailOutput(selectors.model_get(user=request.user, name=name)).data)

    @extend_schema(request=ModelUpdateInput, responses=ModelDetailOutput, summary="Edit a model's description")
    def patch(self, request, name: str):
        model = selectors.model_get(user=request.user, name=name)
        serializer = self.ModelUpdateInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.registered_model_update(actor=request.user, model=model, **serializer.validated_data)
        return Response(ModelDetailOutput(selectors.model_get(user=request.user, name=name)).data)
