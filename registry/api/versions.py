"""REST API of model versions: registration (multipart, or JSON naming a finished upload), details, artifacts."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import FileResponse, HttpResponseNotModified, HttpResponseRedirect, JsonResponse
from django.urls import reverse
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import InvalidInput, NotFound, PayloadTooLarge
from core.openapi import SHA256_OR_BLANK_PATTERN, VersionField, documented
from core.rest import Pagination, StrictSerializer
from registry import reference, selectors, services
from registry.api.models import VersionSummaryOutput
from registry.models import Flavor, ModelVersion
from registry.multipart import (
    ARTIFACT_FIELD,
    ArtifactUploadHandler,
    StagedArtifactFile,
    UploadStalled,
    body_idle_timeout,
    too_large_message,
    version_input_from,
)
from registry.storage import artifact_store


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
            "model",
            "version",
            "flavor",
            "sha256",
            "size",
            "artifact_filename",
            "artifact_url",
            "input_schema",
            "output_schema",
            "input_schema_inferred",
            "output_schema_inferred",
            "sample_input",
            "sample_output",
            "metrics",
            "task",
            "lineage",
            "description",
            "changes",
            "previous_version",
            "created_at",
            "created_by",
        ]

    @extend_schema_field(LineageOutput)
    def get_lineage(self, version: ModelVersion) -> dict[str, Any]:
        return {"git_commit": version.git_commit, "data_ref": version.data_ref, "parameters": version.parameters}

    def get_artifact_url(self, version: ModelVersion) -> str:
        return reverse("api_version_artifact", args=[version.model.name, version.version])


class VersionRegisterInput(StrictSerializer):
    """The multipart form of a registration (documentation only; parsed by hand, in
    registry/multipart.py, which refuses other fields and these limits as documented)."""

    artifact = serializers.FileField(help_text="The model file: joblib/pickle, .onnx, or a .py file for pyfunc.")
    version = VersionField(help_text="MAJOR.MINOR.PATCH, higher than the latest of its major.")
    flavor = serializers.ChoiceField(choices=Flavor.choices)
    sample_input = serializers.JSONField(
        help_text='{"instances": [...]} or a list of instances (text or a .json file).'
    )
    input_schema = serializers.JSONField(required=False, help_text="JSON Schema of one instance; inferred if absent.")
    output_schema = serializers.JSONField(
        required=False, help_text="JSON Schema of one prediction; inferred if absent."
    )
    metrics = documented(
        serializers.JSONField(required=False, help_text='Evaluation metrics, e.g. {"accuracy": 0.93}.'),
        type="object",
        additionalProperties={"type": "number"},
    )
    task = serializers.ChoiceField(
        choices=["classification", "regression"],
        required=False,
        help_text="What live quality is measured as; inferred from the output schema if absent.",
    )
    parameters = documented(
        serializers.JSONField(required=False, help_text="Training parameters (lineage)."), type="object"
    )
    git_commit = serializers.CharField(required=False, allow_blank=True, max_length=64)
    data_ref = serializers.CharField(
        required=False, allow_blank=True, max_length=500, help_text="Where the training data came from."
    )
    description = serializers.CharField(
        required=False, allow_blank=True, max_length=100_000, help_text="Markdown model card."
    )
    sha256 = documented(
        serializers.CharField(
            required=False,
            allow_blank=True,
            max_length=64,
            help_text="Expected sha256 of the artifact; refused on mismatch.",
        ),
        pattern=SHA256_OR_BLANK_PATTERN,
    )


class BreakingChangesOutput(serializers.Serializer):
    detail = serializers.CharField()
    compared_with = serializers.CharField()
    breaking_changes = ChangeOutput(many=True)


class VersionRegisterJsonInput(VersionRegisterInput):
    """A registration that references a finished resumable upload instead of carrying the bytes."""

    artifact = None
    upload = serializers.UUIDField(help_text="The id of a finished upload (POST /api/v1/uploads).")


class VersionListApi(APIView):
    pagination_class = Pagination  # the schema documents the list as paginated
    parser_classes = [MultiPartParser, JSONParser]

    def dispatch(self, request, *args, **kwargs):
        # Before anything reads the body: refuse an announced oversize upload at once, and
        # stream the artifact into the store instead of Django's temporary files.
        if request.method == "POST":
            length = request.META.get("CONTENT_LENGTH") or "0"
            if length.isdigit() and int(length) > settings.ARTIFACT_MAX_BYTES + settings.REGISTRY_JSON_PART_MAX_BYTES:
                return JsonResponse({"detail": too_large_message(settings.ARTIFACT_MAX_BYTES)}, status=413)
            handler = ArtifactUploadHandler(request, authorize=lambda: self._authorize(request, kwargs["name"]))
            request.upload_handlers = [handler]
            try:
                with body_idle_timeout(request):
                    return super().dispatch(request, *args, **kwargs)
            except UploadStalled as exc:  # raised outside DRF's handling, which had let it through
                return JsonResponse({"detail": exc.message}, status=exc.status_code)
            finally:
                # Whatever happened (refused, CSRF failure, bad part, crash), nothing staged
                # and uncommitted survives the request, and no check process lingers.
                handler.discard()
        return super().dispatch(request, *args, **kwargs)

    @staticmethod
    def _authorize(request, name: str) -> None:
        # The user is the session's, or the token's once authenticated: whoever parses the
        # body first (a session request's CSRF check does) finds it set.
        services.version_register_check(actor=request.user, model=selectors.model_get(user=request.user, name=name))

    @extend_schema(responses=VersionSummaryOutput(many=True), summary="Versions of a model, newest first")
    def get(self, request, name: str):
        model = selectors.model_get(user=request.user, name=name)
        paginator = Pagination()
        page = paginator.paginate_queryset(selectors.version_list(model=model), request, view=self)
        return paginator.get_paginated_response(VersionSummaryOutput(page, many=True).data)

    @extend_schema(
        request={"multipart/form-data": VersionRegisterInput, "application/json": VersionRegisterJsonInput},
        responses={201: VersionOutput, 409: BreakingChangesOutput},
        summary="Register a version (multipart upload, or JSON referencing a resumable upload)",
    )
    def post(self, request, name: str):
        handler: ArtifactUploadHandler = request._request.upload_handlers[0]
        try:
            model = selectors.model_get(user=request.user, name=name)
            services.version_register_check(actor=request.user, model=model)
            if request.content_type.startswith("application/json"):
                if not isinstance(request.data, dict):
                    raise InvalidInput("Send the registration as a JSON object.")
                data, upload_file = version_input_from(request.data, {}, parsed=True), None
            else:
                data, upload_file = version_input_from(request.data, request.FILES), request.FILES.get(ARTIFACT_FIELD)
            staged = check = upload = None
            if data.upload:
                if upload_file is not None:
                    raise InvalidInput("Send the artifact or the id of a finished upload, not both.", field="upload")
                try:
                    upload = selectors.upload_get(user=request.user, upload_id=data.upload)
                except NotFound as exc:
                    raise InvalidInput(exc.message, field="upload") from None
            elif isinstance(upload_file, StagedArtifactFile):
                staged, check = upload_file.staged, upload_file.check
                data.artifact_filename = upload_file.name or ""
            else:
                raise InvalidInput(
                    "artifact: attach the model file as a multipart file part, or give the id of a finished "
                    "upload as 'upload' (POST /api/v1/uploads).",
                    field=ARTIFACT_FIELD,
                )
            version = services.model_version_register(
                actor=request.user, model=model, data=data, staged=staged, check=check, upload=upload
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
    store = artifact_store()
    # A store that can hand out short-lived URLs (S3 with ARTIFACT_S3_PRESIGNED_DOWNLOADS) sends
    # the client to the bytes, so large downloads do not pass through the portal's workers.
    download_url = getattr(store, "download_url", None)
    if download_url is not None and (url := download_url(sha256, filename=filename)):
        response = HttpResponseRedirect(url)
        response["ETag"] = etag
        response["Cache-Control"] = "private, no-store"  # the URL expires; the artifact does not
        return response
    response = FileResponse(
        store.open(sha256), as_attachment=True, filename=filename, content_type="application/octet-stream"
    )
    response["ETag"] = etag
    response["Content-Length"] = str(version.artifact.size)
    response["Cache-Control"] = "private, max-age=31536000, immutable"
    return response


class VersionArtifactApi(APIView):
    @extend_schema(
        responses={(200, "application/octet-stream"): bytes, 302: None, 304: None},
        summary="Download the artifact (streamed, or 302 to a presigned S3 URL; ETag is its sha256)",
    )
    def get(self, request, name: str, version: str):
        model = selectors.model_get(user=request.user, name=name)
        return artifact_response(request, selectors.version_get(model=model, version=version))


class ReferenceFeatureOutput(serializers.Serializer):
    name = serializers.CharField()
    kind = serializers.ChoiceField(choices=["number", "category"])
    missing = serializers.FloatField(help_text="The share of reference rows without a value.")
    min = serializers.FloatField(required=False, allow_null=True)
    max = serializers.FloatField(required=False, allow_null=True)
    edges = serializers.ListField(child=serializers.FloatField(), required=False, help_text="Decile bin edges.")
    categories = serializers.ListField(child=serializers.CharField(), required=False)
    expected = serializers.ListField(child=serializers.FloatField(), help_text="The share in each bin.")


class ReferenceOutput(serializers.Serializer):
    source = serializers.ChoiceField(
        choices=["upload", "sample"], help_text="Uploaded reference data, or the version's sample input."
    )
    rows = serializers.IntegerField()
    too_small = serializers.BooleanField(
        help_text=f"Fewer than {reference.MIN_ROWS} rows: drift is scored, but too few rows to judge it."
    )
    filename = serializers.CharField(allow_blank=True)
    sha256 = serializers.CharField(allow_blank=True)
    created_at = serializers.CharField(allow_blank=True)
    created_by = serializers.CharField(allow_blank=True)
    features = ReferenceFeatureOutput(many=True)


class ReferenceInput(serializers.Serializer):
    file = serializers.FileField(
        help_text="Inputs like the ones the version was validated on: CSV (a column per input field), "
        'Parquet, or JSON (an array of instances, {"instances": [...]}, or one instance per line).'
    )


def reference_output(version: ModelVersion) -> dict | None:
    profile = selectors.version_reference(version=version)
    return None if profile is None else {**profile, "too_small": reference.too_small(profile)}


class VersionReferenceApi(APIView):
    parser_classes = [MultiPartParser]

    @extend_schema(
        responses={200: ReferenceOutput, 404: None},
        summary="The reference data live inputs are compared with (by default the sample input)",
    )
    def get(self, request, name: str, version: str):
        model = selectors.model_get(user=request.user, name=name)
        found = reference_output(selectors.version_get(model=model, version=version))
        if found is None:
            raise NotFound(f"{name} {version} has no reference data and no sample input.")
        return Response(ReferenceOutput(found).data)

    @extend_schema(
        request={"multipart/form-data": ReferenceInput},
        responses=ReferenceOutput,
        summary="Set a version's reference data for drift (replaces the earlier one)",
    )
    def put(self, request, name: str, version: str):
        model = selectors.model_get(user=request.user, name=name)
        found = selectors.version_get(model=model, version=version)
        services.version_reference_check(actor=request.user, model=model)  # before the file is read
        upload = request.FILES.get("file")
        if upload is None:
            raise InvalidInput("Send the reference file as the multipart field 'file'.", field="file")
        if upload.size > reference.MAX_BYTES:
            raise PayloadTooLarge(f"A reference file may be at most {reference.MAX_BYTES // (1024 * 1024)} MiB.")
        services.version_reference_set(actor=request.user, version=found, filename=upload.name, data=upload.read())
        return Response(ReferenceOutput(reference_output(found)).data)
