"""Reads for the model registry; every one applies the caller's object permissions."""

from __future__ import annotations

import uuid

from django.db.models import Count, Max, Prefetch, Q, QuerySet, Sum
from django.utils import timezone
from guardian.shortcuts import get_objects_for_user

from accounts.models import User
from core.errors import Gone, InvalidInput, NotFound
from registry import reference, semver
from registry.models import Artifact, ModelVersion, RegisteredModel, Upload
from registry.storage import PartsState, UploadMissing, artifact_store, part_count


def model_list(*, user: User, search: str = "", team: str = "") -> QuerySet[RegisteredModel]:
    models = get_objects_for_user(
        user, "registry.view_registeredmodel", klass=RegisteredModel, accept_global_perms=False
    )
    if search:
        models = models.filter(Q(name__icontains=search) | Q(description__icontains=search))
    if team:
        models = models.filter(team__name=team)
    return (
        models.select_related("team")
        .annotate(version_count=Count("versions"), last_registered=Max("versions__created_at"))
        .order_by("name")
    )


def model_get(*, user: User, name: str) -> RegisteredModel:
    model = model_list(user=user).filter(name=name).first()
    if model is None:
        raise NotFound(f"No model named '{name}' that you can see.")
    return model


def version_list(*, model: RegisteredModel) -> QuerySet[ModelVersion]:
    return (
        ModelVersion.objects.filter(model=model)
        .select_related("artifact", "created_by")
        .order_by("-major", "-minor", "-patch")
    )


def version_get(*, model: RegisteredModel, version: str) -> ModelVersion:
    try:
        major, minor, patch = semver.parse(version)
    except InvalidInput:
        raise NotFound(f"'{version}' is not a version (versions look like 1.4.0).") from None
    found = (
        version_list(model=model)
        .select_related("previous", "model__team")
        .filter(major=major, minor=minor, patch=patch)
        .first()
    )
    if found is None:
        raise NotFound(f"Model '{model.name}' has no version {version}.")
    return found


def models_with_latest(*, models: QuerySet[RegisteredModel]) -> QuerySet[RegisteredModel]:
    """Prefetch each model's versions, newest first, for list pages (constant query count)."""
    return models.prefetch_related(
        Prefetch("versions", queryset=ModelVersion.objects.order_by("-major", "-minor", "-patch"), to_attr="ordered")
    )


def metric_names(versions: list[ModelVersion]) -> list[str]:
    names: list[str] = []
    for v in versions:
        names += [k for k in v.metrics if k not in names]
    return names


def upload_list(*, user: User) -> QuerySet[Upload]:
    """The caller's uploads that are not yet registered, newest first (nobody sees others')."""
    return (
        Upload.objects.filter(created_by=user, expires_at__gt=timezone.now())
        .exclude(status=Upload.Status.REGISTERED)
        .order_by("-created_at")
    )


def upload_get(*, user: User, upload_id: str) -> Upload:
    try:
        key = uuid.UUID(str(upload_id))
    except ValueError:
        raise NotFound(f"'{upload_id}' is not an upload id.") from None
    upload = Upload.objects.filter(created_by=user, pk=key).select_related("version").first()
    if upload is None:
        raise NotFound(f"No upload {upload_id} of yours. Uploads that sat idle too long are removed; start a new one.")
    if upload.status != Upload.Status.REGISTERED and upload.expires_at <= timezone.now():
        raise Gone(
            f"Upload {upload_id} sat idle until it expired at {upload.expires_at:%Y-%m-%d %H:%M} UTC. Start a new one."
        )
    return upload


def upload_parts(*, upload: Upload) -> PartsState:
    """Which parts of the upload arrived: the store is the truth while receiving; a finished
    upload has them all, and one whose bytes are gone none."""
    count = part_count(upload.size, upload.part_size)
    if upload.status != Upload.Status.RECEIVING:
        return PartsState(upload.size, upload.part_size, (True,) * count)
    try:
        return artifact_store().resumable(upload.key, size=upload.size, part_size=upload.part_size).parts()
    except UploadMissing:
        return PartsState(upload.size, upload.part_size, (False,) * count)


def artifact_bytes_used(*, user: User, sha256: str = "") -> tuple[int, bool]:
    """Bytes of the distinct artifacts `user`'s versions hold, and whether one of them has
    this digest (registering it again adds nothing to what they use)."""
    artifacts = Artifact.objects.filter(pk__in=ModelVersion.objects.filter(created_by=user).values("artifact"))
    used = artifacts.aggregate(total=Sum("size"))["total"] or 0
    return used, bool(sha256) and artifacts.filter(sha256=sha256).exists()


def version_reference(*, version: ModelVersion) -> dict | None:
    """The profile live inputs of `version` are compared with: its uploaded reference data,
    or else its sample input; None if it has neither."""
    if version.reference:
        return version.reference
    instances = version.sample_input
    if not isinstance(instances, list) or not instances:
        return None
    return reference.profile_from_instances(instances, version.input_schema)
