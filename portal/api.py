"""REST API of the model registry: models, versions (multipart registration), artifacts."""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.http import FileResponse, HttpResponseNotModified, JsonResponse
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors as account_selectors
from portal import selectors, services
from portal.errors import InvalidInput, NotAllowed, NotFound, PortalError
from portal.models import Flavor, ModelVersion, RegisteredModel, Upload
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


class VersionRegisterJsonInput(VersionRegisterInput):
    """A registration that references a finished resumable upload instead of carrying the bytes."""

    artifact = None
    upload = serializers.UUIDField(help_text="The id of a finished upload (POST /api/v1/uploads).")


class VersionListApi(APIView):
    parser_classes = [MultiPartParser, JSONParser]

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
        request={"multipart/form-data": VersionRegisterInput, "application/json": VersionRegisterJsonInput},
        responses={201: VersionOutput, 409: BreakingChangesOutput},
        summary="Register a version (multipart upload, or JSON referencing a resumable upload)",
    )
    def post(self, request, name: str):
        handler: ArtifactUploadHandler = request._request.upload_handlers[0]
        try:
            model = selectors.model_get(user=request.user, name=name)
            if not request.user.has_perm("portal.register_version", model):
                raise NotAllowed(
                    f"Only owners, maintainers and members of team '{model.team.name}' may register versions."
                )
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


# ---------------------------------------------------------------- resumable uploads


class UploadOutput(serializers.ModelSerializer):
    offset = serializers.SerializerMethodField(help_text="Bytes held so far: the next chunk starts here.")
    url = serializers.SerializerMethodField()
    chunk_size = serializers.SerializerMethodField(help_text="The chunk size the portal suggests.")
    version = serializers.CharField(source="version.version", allow_null=True, default=None)

    class Meta:
        model = Upload
        fields = [
            "id",
            "url",
            "filename",
            "size",
            "sha256",
            "offset",
            "status",
            "deduplicated",
            "chunk_size",
            "version",
            "created_at",
            "updated_at",
            "expires_at",
        ]

    def get_offset(self, upload: Upload) -> int:
        return selectors.upload_offset(upload=upload)

    def get_url(self, upload: Upload) -> str:
        return reverse("api_upload_detail", args=[upload.id])

    def get_chunk_size(self, upload: Upload) -> int:
        return settings.UPLOAD_CHUNK_BYTES


def _upload_response(upload: Upload, *, status_code: int = 200) -> Response:
    body = UploadOutput(upload).data
    response = Response(body, status=status_code)
    response["Upload-Offset"] = str(body["offset"])
    response["Cache-Control"] = "no-store"
    if status_code == status.HTTP_201_CREATED:
        response["Location"] = body["url"]
    return response


_DRAIN_LIMIT = 64 * 1024 * 1024
_CONTENT_RANGE = re.compile(r"bytes (\d{1,19})-(\d{1,19})/(\d{1,19})")


def _read_body(request, length: int, piece: int = 1024 * 1024):
    """The request body as it arrives, in pieces (never held whole).

    A connection that goes silent (a laptop's network dropped without a word, so no FIN or
    RST ever comes) would block this read, and the upload's lock with it, for as long as
    the server lets a socket idle, which under gunicorn's threads is forever: every retry
    would hear "another chunk is arriving". So the socket gets a time limit per read for
    this body; when it passes, what arrived is kept and the client resumes from there.
    Behind a proxy that buffers request bodies, the proxy's own body timeout applies first.
    """
    sock = request.META.get("gunicorn.socket")
    if sock is not None:
        sock.settimeout(settings.UPLOAD_CHUNK_IDLE_SECONDS)
    try:
        left = length
        while left > 0:
            try:
                data = request.read(min(piece, left))
            except OSError:  # reset, or silent past the limit: keep what arrived
                return
            if not data:
                return
            left -= len(data)
            yield data
    finally:
        if sock is not None:
            sock.settimeout(None)  # gunicorn's own blocking mode for the rest of the connection


class UploadListApi(APIView):
    class UploadCreateInput(StrictSerializer):
        size = serializers.IntegerField(min_value=1, help_text="The whole file's length in bytes.")
        sha256 = serializers.CharField(
            required=False,
            allow_blank=True,
            default="",
            max_length=64,
            help_text="Hex digest of the whole file. Required here or when finishing.",
        )
        filename = serializers.CharField(required=False, allow_blank=True, default="", max_length=1000)

    @extend_schema(responses=UploadOutput(many=True), summary="Your unfinished and unregistered uploads")
    def get(self, request):
        paginator = Pagination()
        page = paginator.paginate_queryset(selectors.upload_list(user=request.user), request, view=self)
        return paginator.get_paginated_response(UploadOutput(page, many=True).data)

    @extend_schema(
        request=UploadCreateInput,
        responses={201: UploadOutput},
        summary="Start a resumable upload",
        description=(
            "Then send the bytes in chunks with `PUT /uploads/{id}` and `Content-Range: bytes START-END/SIZE`, "
            "each starting where the last ended (`offset`), and finish with `POST /uploads/{id}/complete`. "
            "If content with this sha256 is stored already and you can read it, the upload is complete at once."
        ),
    )
    def post(self, request):
        serializer = self.UploadCreateInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        upload = services.upload_create(actor=request.user, **serializer.validated_data)
        return _upload_response(upload, status_code=status.HTTP_201_CREATED)


class UploadDetailApi(APIView):
    @extend_schema(responses=UploadOutput, summary="An upload and its offset (where to resume)")
    def get(self, request, upload_id: str):
        return _upload_response(selectors.upload_get(user=request.user, upload_id=upload_id))

    @extend_schema(
        request={"application/octet-stream": bytes},
        parameters=[
            OpenApiParameter(
                "Content-Range",
                str,
                OpenApiParameter.HEADER,
                required=True,
                description="bytes START-END/SIZE; START must equal the upload's offset.",
            )
        ],
        responses={200: UploadOutput, 416: None},
        summary="Send one chunk",
    )
    def put(self, request, upload_id: str):
        try:
            return self._put(request, upload_id)
        except PortalError:
            # Read what is left of a refused chunk before answering: closing a connection
            # with unread bytes makes the client see a reset instead of the answer (416 and
            # the offset to resume from, or 409). Beyond a bound it is cheaper to let it reset.
            for _ in _read_body(request._request, _DRAIN_LIMIT):
                pass
            raise

    def _put(self, request, upload_id: str):
        upload = selectors.upload_get(user=request.user, upload_id=upload_id)
        match = _CONTENT_RANGE.fullmatch(request.headers.get("Content-Range", "").strip())
        if match is None:
            raise InvalidInput(
                "Say where the chunk goes with a header 'Content-Range: bytes START-END/SIZE' "
                f"(END inclusive; SIZE is {upload.size}).",
                field="Content-Range",
            )
        start, end, total = (int(g) for g in match.groups())
        if total != upload.size:
            raise InvalidInput(
                f"Content-Range says the file is {total} bytes; this upload is for {upload.size}.",
                field="Content-Range",
            )
        if end < start or end >= total:
            raise services.UploadRangeError(
                f"Content-Range bytes {start}-{end} is not a range inside 0-{total - 1}.",
                offset=selectors.upload_offset(upload=upload),
            )
        length = request.META.get("CONTENT_LENGTH") or ""
        if not length.isdigit():
            return Response({"detail": "Send a Content-Length with each chunk."}, status=411)
        if int(length) != end - start + 1:
            raise InvalidInput(
                f"The body is {length} bytes, but Content-Range bytes {start}-{end} is {end - start + 1}.",
                field="Content-Range",
            )
        upload = services.upload_append(
            actor=request.user, upload=upload, offset=start, chunks=_read_body(request._request, int(length))
        )
        if upload.received < end + 1:
            raise InvalidInput(
                f"The chunk was cut short: the upload now holds {upload.received} bytes. Resume from there.",
                extra={"offset": upload.received},
            )
        return _upload_response(upload)

    @extend_schema(responses={204: None}, summary="Abort an upload and drop its bytes")
    def delete(self, request, upload_id: str):
        upload = selectors.upload_get(user=request.user, upload_id=upload_id)
        services.upload_abort(actor=request.user, upload=upload)
        return Response(status=status.HTTP_204_NO_CONTENT)


class UploadCompleteApi(APIView):
    class UploadCompleteInput(StrictSerializer):
        sha256 = serializers.CharField(required=False, allow_blank=True, default="", max_length=64)

    @extend_schema(
        request=UploadCompleteInput,
        responses={200: UploadOutput},
        summary="Finish an upload: every byte arrived and the digest matches",
    )
    def post(self, request, upload_id: str):
        upload = selectors.upload_get(user=request.user, upload_id=upload_id)
        serializer = self.UploadCompleteInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        upload = services.upload_complete(actor=request.user, upload=upload, sha256=serializer.validated_data["sha256"])
        return _upload_response(upload)
