"""REST API of the model registry: models, versions (multipart registration), artifacts."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import FileResponse, HttpResponseNotModified, JsonResponse
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors as account_selectors
from portal import selectors, services
from portal.errors import InvalidInput, NotAllowed
from portal.models import Flavor, ModelVersion, RegisteredModel
from portal.rest import Pagination, StrictSerializer
from portal.storage import artifact_store
from portal.uploads import (
    ARTIFACT_FIELD,
    ArtifactUploadHandler,
    StagedArtifactFile,
    too_large_message,
    version_input_from,
)

# ---------------------------------------------------------------- output shapes


class VersionSummaryOutput(serializers.ModelSerializer):
    sha256 = serializers.CharField(source="artifact.sha256")
    size = serializers.IntegerField(source="artifact.size")

    class Meta:
        model = ModelVersion
        fields = ["version", "flavor", "sha256", "size", "metrics", "created_at"]


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


class LineageOutput(serializers.Serializer):
    git_commit = serializers.CharField()
    data_ref = serializers.CharField()
    parameters = serializers.DictField()


class ChangeOutput(serializers.Serializer):
    side = serializers.ChoiceField(choices=["input", "output"])
    path = serializers.CharField()
    message = serializers.CharField()
    breaking = serializers.BooleanField()


class VersionOutput(serializers.ModelSerializer):
    model = serializers.CharField(source="model.name")
    sha256 = serializers.CharField(source="artifact.sha256")
    size = serializers.IntegerField(source="artifact.size")
    lineage = serializers.SerializerMethodField()
    changes = ChangeOutput(many=True)
    previous_version = serializers.CharField(source="previous.version", allow_null=True, default=None)
    created_by = serializers.CharField(source="created_by.username", allow_null=True, default=None)
    artifact_url = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = [
            "model", "version", "flavor", "sha256", "size", "artifact_filename", "artifact_url",
            "input_schema", "output_schema", "input_schema_inferred", "output_schema_inferred",
            "sample_input", "sample_output", "metrics", "lineage", "description",
            "changes", "previous_version", "created_at", "created_by",
        ]  # fmt: skip

    @extend_schema_field(LineageOutput)
    def get_lineage(self, version: ModelVersion) -> dict[str, Any]:
        return {"git_commit": version.git_commit, "data_ref": version.data_ref, "parameters": version.parameters}

    def get_artifact_url(self, version: ModelVersion) -> str:
        return reverse("api_version_artifact", args=[version.model.name, version.version])


# ---------------------------------------------------------------- models


class ModelListApi(APIView):
    class ModelCreateInput(StrictSerializer):
        name = serializers.CharField(max_length=100)
        team = serializers.CharField(max_length=64)
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


# ---------------------------------------------------------------- versions


class VersionRegisterInput(serializers.Serializer):
    """The multipart form of a registration (documentation only; parsed by hand)."""

    artifact = serializers.FileField(help_text="The model file: joblib/pickle, .onnx, or a .py file for pyfunc.")
    version = serializers.CharField(help_text="MAJOR.MINOR.PATCH, higher than the latest of its major.")
    flavor = serializers.ChoiceField(choices=Flavor.choices)
    sample_input = serializers.JSONField(
        help_text='{"instances": [...]} or a list of instances (text or a .json file).'
    )
    input_schema = serializers.JSONField(required=False, help_text="JSON Schema of one instance; inferred if absent.")
    output_schema = serializers.JSONField(
        required=False, help_text="JSON Schema of one prediction; inferred if absent."
    )
    metrics = serializers.JSONField(required=False, help_text='Evaluation metrics, e.g. {"accuracy": 0.93}.')
    parameters = serializers.JSONField(required=False, help_text="Training parameters (lineage).")
    git_commit = serializers.CharField(required=False)
    data_ref = serializers.CharField(required=False, help_text="Where the training data came from.")
    description = serializers.CharField(required=False, help_text="Markdown model card.")
    sha256 = serializers.CharField(required=False, help_text="Expected sha256 of the artifact; refused on mismatch.")


class BreakingChangesOutput(serializers.Serializer):
    detail = serializers.CharField()
    compared_with = serializers.CharField()
    breaking_changes = ChangeOutput(many=True)


class VersionListApi(APIView):
    parser_classes = [MultiPartParser]

    def dispatch(self, request, *args, **kwargs):
        # Before anything reads the body: refuse an announced oversize upload at once, and
        # stream the artifact into the store instead of Django's temporary files.
        if request.method == "POST":
            length = request.META.get("CONTENT_LENGTH") or "0"
            if length.isdigit() and int(length) > settings.ARTIFACT_MAX_BYTES + settings.REGISTRY_JSON_PART_MAX_BYTES:
                return JsonResponse({"detail": too_large_message(settings.ARTIFACT_MAX_BYTES)}, status=413)
            handler = ArtifactUploadHandler(request)
            request.upload_handlers = [handler]
            try:
                return super().dispatch(request, *args, **kwargs)
            finally:
                # Whatever happened (refused, CSRF failure, bad part, crash), nothing staged
                # and uncommitted survives the request, and no check process lingers.
                handler.discard()
        return super().dispatch(request, *args, **kwargs)

    @extend_schema(responses=VersionSummaryOutput(many=True), summary="Versions of a model, newest first")
    def get(self, request, name: str):
        model = selectors.model_get(user=request.user, name=name)
        paginator = Pagination()
        page = paginator.paginate_queryset(selectors.version_list(model=model), request, view=self)
        return paginator.get_paginated_response(VersionSummaryOutput(page, many=True).data)

    @extend_schema(
        request={"multipart/form-data": VersionRegisterInput},
        responses={201: VersionOutput, 409: BreakingChangesOutput},
        summary="Register a version (multipart upload)",
    )
    def post(self, request, name: str):
        handler: ArtifactUploadHandler = request._request.upload_handlers[0]
        try:
            model = selectors.model_get(user=request.user, name=name)
            if not request.user.has_perm("portal.register_version", model):
                raise NotAllowed(
                    f"Only owners, maintainers and members of team '{model.team.name}' may register versions."
                )
            upload = request.FILES.get(ARTIFACT_FIELD)
            if not isinstance(upload, StagedArtifactFile):
                raise InvalidInput("artifact: attach the model file as a multipart file part.", field=ARTIFACT_FIELD)
            data = version_input_from(request.data, request.FILES)
            data.artifact_filename = upload.name or ""
            version = services.model_version_register(
                actor=request.user, model=model, data=data, staged=upload.staged, check=upload.check
            )
        finally:
            handler.discard()  # anything not committed (a refused or failed registration) is removed
        return Response(VersionOutput(version).data, status=status.HTTP_201_CREATED)


class VersionDetailApi(APIView):
    @extend_schema(responses=VersionOutput, summary="A version: schemas, sample, metrics, lineage, changes")
    def get(self, request, name: str, version: str):
        model = selectors.model_get(user=request.user, name=name)
        return Response(VersionOutput(selectors.version_get(model=model, version=version)).data)


def artifact_response(request, version: ModelVersion):
    """Stream the artifact; the ETag is its sha256, so clients can verify and cache it."""
    sha256 = version.artifact.sha256
    etag = f'"{sha256}"'
    if etag in request.headers.get("If-None-Match", ""):
        response = HttpResponseNotModified()
        response["ETag"] = etag
        return response
    filename = version.artifact_filename or f"{version.model.name}-{version.version}.bin"
    response = FileResponse(
        artifact_store().open(sha256), as_attachment=True, filename=filename, content_type="application/octet-stream"
    )
    response["ETag"] = etag
    response["Content-Length"] = str(version.artifact.size)
    response["Cache-Control"] = "private, max-age=31536000, immutable"
    return response


class VersionArtifactApi(APIView):
    @extend_schema(
        responses={(200, "application/octet-stream"): bytes, 304: None},
        summary="Download the artifact (streamed; ETag is its sha256)",
    )
    def get(self, request, name: str, version: str):
        model = selectors.model_get(user=request.user, name=name)
        return artifact_response(request, selectors.version_get(model=model, version=version))
