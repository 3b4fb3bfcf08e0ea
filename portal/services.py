"""Writes for the model registry: models and their versions.

Registering a version is the heart of it: nothing is recorded unless the artifact's digest
matches, the version is new and higher, the schemas are real JSON Schemas, the model loads
and predicts its sample input in a separate limited process, and the schema change is
allowed for the version number. Then the artifact is committed (stored once per digest)
and the version row is written, with its audit event, in one short transaction.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, Sum
from django.utils import timezone
from guardian.shortcuts import get_objects_for_user

from accounts.models import AuditAction, Team, User
from accounts.services import audit_event_record, team_roles_grant
from portal import schemas, semver
from portal.errors import (
    Conflict,
    Gone,
    InvalidInput,
    NotAllowed,
    PayloadTooLarge,
    RangeNotSatisfiable,
    check_name,
)
from portal.models import Artifact, Flavor, ModelVersion, RegisteredModel, Upload
from portal.permissions import MODEL_ROLE_PERMISSIONS
from portal.storage import (
    ArtifactTooLarge,
    StagedWrite,
    UploadBusy,
    UploadMissing,
    UploadOffsetMismatch,
    artifact_store,
    valid_sha256,
)
from portal.validation import ModelCheck, model_check

# ---------------------------------------------------------------- registered models


@transaction.atomic
def registered_model_create(*, actor: User, name: str, team: Team, description: str = "") -> RegisteredModel:
    if not actor.has_perm("accounts.create_model", team):
        raise NotAllowed(f"Only owners, maintainers and members of team '{team.name}' may register models for it.")
    check_name(name, what="model", max_length=100)
    if RegisteredModel.objects.filter(name=name).exists():
        raise Conflict(f"A model named '{name}' already exists. Pick another name, or register a version of it.")
    try:
        with transaction.atomic():
            model = RegisteredModel.objects.create(name=name, team=team, description=description, created_by=actor)
    except IntegrityError:
        raise Conflict(f"A model named '{name}' already exists.") from None
    team_roles_grant(team=team, obj=model, table=MODEL_ROLE_PERMISSIONS)
    audit_event_record(actor=actor, action=AuditAction.MODEL_CREATE, target=model, team=team)
    return model


@transaction.atomic
def registered_model_update(*, actor: User, model: RegisteredModel, description: str) -> RegisteredModel:
    if not actor.has_perm("portal.change_registeredmodel", model):
        raise NotAllowed(f"Only owners and maintainers of team '{model.team.name}' may edit model '{model.name}'.")
    if description != model.description:
        model.description = description
        model.save(update_fields=["description"])
        audit_event_record(
            actor=actor, action=AuditAction.MODEL_CHANGE, target=model, team=model.team, data={"field": "description"}
        )
    return model


# ---------------------------------------------------------------- versions


@dataclass
class VersionInput:
    """What a registration carries besides the artifact (all already parsed from JSON)."""

    version: str
    flavor: str
    sample_input: Any = None
    input_schema: dict | None = None
    output_schema: dict | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    description: str = ""
    git_commit: str = ""
    data_ref: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    artifact_filename: str = ""
    upload: str = ""  # the id of a finished resumable upload, instead of the bytes


class BreakingChange(Conflict):
    pass


def _latest(model: RegisteredModel, *, major: int | None = None) -> ModelVersion | None:
    versions = ModelVersion.objects.filter(model=model)
    if major is not None:
        versions = versions.filter(major=major)
    return versions.order_by("-major", "-minor", "-patch").first()


def _check_order(model: RegisteredModel, new: tuple[int, int, int]) -> None:
    """A new version must be higher than the latest of its major; a new major higher than every major."""
    label = semver.render(new)
    same_major = _latest(model, major=new[0])
    if same_major is not None:
        if new <= same_major.semver:
            raise Conflict(
                f"Version {label} is not greater than {same_major.version}, the latest {new[0]}.x version of "
                f"'{model.name}'. Versions must increase; use e.g. {same_major.major}.{same_major.minor}."
                f"{same_major.patch + 1} or {same_major.major}.{same_major.minor + 1}.0."
            )
        return
    latest = _latest(model)
    if latest is not None and new[0] < latest.major:
        raise Conflict(
            f"Version {label} would start major {new[0]}, below the latest major {latest.major}. "
            f"New majors must increase; use {latest.major + 1}.0.0."
        )


def _check_metrics(metrics: Any) -> dict[str, float]:
    if not isinstance(metrics, dict):
        raise InvalidInput('Metrics are a JSON object of names to numbers, e.g. {"accuracy": 0.93}.', field="metrics")
    for key, value in metrics.items():
        try:
            finite = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
        except OverflowError:
            finite = False
        if not finite:
            raise InvalidInput(f"Metric '{key}' is {value!r}; every metric must be a finite number.", field="metrics")
        if not key or len(key) > 100:
            raise InvalidInput("Metric names must be 1 to 100 characters.", field="metrics")
    return {k: float(v) for k, v in metrics.items()}


def _prepare(
    model: RegisteredModel, data: VersionInput, staged: StagedWrite
) -> tuple[tuple[int, int, int], list, dict]:
    """Every check that needs no model code: cheap, and done before the load check."""
    number = semver.parse(data.version)
    if data.flavor not in Flavor.values:
        raise InvalidInput(f"Unknown flavor '{data.flavor}'. Flavors are: {', '.join(Flavor.values)}.", field="flavor")
    if data.sha256:
        expected = data.sha256.strip().lower()
        if not valid_sha256(expected):
            raise InvalidInput("sha256 must be 64 hexadecimal characters.", field="sha256")
        if expected != staged.sha256:
            raise InvalidInput(
                f"The artifact's sha256 is {staged.sha256}, not {expected} as sent: it was changed or cut short "
                "on the way. Upload it again.",
                field="sha256",
            )
    if staged.size == 0:
        raise InvalidInput("The artifact is empty.", field="artifact")
    _check_order(model, number)
    for name in ("input_schema", "output_schema"):
        value = getattr(data, name)
        if value is not None and (problem := schemas.schema_problem(value)):
            raise InvalidInput(f"{name}: {problem}", field=name)
    if data.sample_input is None:
        raise InvalidInput(
            'A sample input is required: a few instances the model can predict, as {"instances": [...]}. '
            "It checks the model now and smoke-tests every deployment later.",
            field="sample_input",
        )
    try:
        instances = schemas.instances_from_sample(data.sample_input)
    except ValueError as exc:
        raise InvalidInput(str(exc), field="sample_input") from None
    if len(instances) > 100:
        raise InvalidInput("A sample input holds at most 100 instances.", field="sample_input")
    input_schema = data.input_schema if data.input_schema is not None else schemas.infer(instances)
    if data.input_schema is not None and (errors := schemas.validation_errors(input_schema, instances)):
        raise InvalidInput(
            "The sample input does not match the input schema: " + "; ".join(errors), field="sample_input"
        )
    return number, instances, input_schema


def model_version_register(
    *,
    actor: User,
    model: RegisteredModel,
    data: VersionInput,
    staged: StagedWrite | None = None,
    check: ModelCheck | None = None,
    upload: Upload | None = None,
) -> ModelVersion:
    """Register a version whose artifact bytes are in `staged` (committed only on success),
    or in a finished resumable `upload` of the actor's.

    `check` is a load-check process started early by the upload handler, if any. A refused
    registration leaves a finished upload as it was, so it can be retried without sending
    the bytes again.
    """
    if not actor.has_perm("portal.register_version", model):
        raise NotAllowed(f"Only owners, maintainers and members of team '{model.team.name}' may register versions.")
    if (staged is None) == (upload is None):
        raise InvalidInput("Send the artifact, or the id of a finished upload, not both.", field="upload")
    if upload is not None:
        staged = _upload_staged(actor=actor, upload=upload)
        data.artifact_filename = data.artifact_filename or upload.filename
    data.metrics = _check_metrics(data.metrics or {})
    number, instances, input_schema = _prepare(model, data, staged)

    # Flush the staged bytes to disk while the model is checked: both take a while on a
    # large artifact, and the check only reads the file through the page cache.
    flushed = threading.Thread(target=staged.flush, daemon=True)
    flushed.start()
    try:
        predictions = model_check(
            flavor=data.flavor,
            path=staged.path,
            instances=instances,
            field_order=schemas.field_order(input_schema),
            check=check,
        )
    finally:
        flushed.join()
    output_schema = data.output_schema if data.output_schema is not None else schemas.infer(predictions)
    if data.output_schema is not None and (errors := schemas.validation_errors(output_schema, predictions)):
        raise InvalidInput(
            "The model's predictions for the sample input do not match the output schema: " + "; ".join(errors),
            field="output_schema",
        )
    return _record(
        actor=actor,
        model=model,
        data=data,
        number=number,
        instances=instances,
        input_schema=input_schema,
        output_schema=output_schema,
        predictions=predictions,
        staged=staged,
        upload=upload,
    )


@transaction.atomic
def _record(
    *,
    actor: User,
    model: RegisteredModel,
    data: VersionInput,
    number: tuple[int, int, int],
    instances: list,
    input_schema: dict,
    output_schema: dict,
    predictions: list,
    staged: StagedWrite,
    upload: Upload | None,
) -> ModelVersion:
    # Lock the model row: two registrations of the same model are serialised here, so the
    # order and breaking-change checks see every version committed before this one.
    model = RegisteredModel.objects.select_for_update().get(pk=model.pk)
    _check_order(model, number)
    label = semver.render(number)
    base = _latest(model, major=number[0])
    if base is not None:
        changes = schemas.diff(
            old_input=base.input_schema,
            new_input=input_schema,
            old_output=base.output_schema,
            new_output=output_schema,
        )
        breaking = [c for c in changes if c.breaking]
        if breaking:
            raise BreakingChange(
                f"Version {label} breaks callers of {base.version}: {len(breaking)} breaking change"
                f"{'s' if len(breaking) != 1 else ''} in its schema. Register it as {number[0] + 1}.0.0 "
                "(a new major version, served at its own /v URL) or keep the schema compatible.",
                extra={"breaking_changes": [c.as_dict() for c in breaking], "compared_with": base.version},
            )
    # The changes shown on the version page are against the version just below it.
    previous = (
        ModelVersion.objects.filter(model=model)
        .exclude(major__gt=number[0])
        .exclude(major=number[0], minor__gt=number[1])
        .exclude(major=number[0], minor=number[1], patch__gt=number[2])
        .order_by("-major", "-minor", "-patch")
        .first()
    )
    changes = []
    if previous is not None:
        changes = schemas.diff(
            old_input=previous.input_schema,
            new_input=input_schema,
            old_output=previous.output_schema,
            new_output=output_schema,
        )

    # The rows first, the file last: if a row cannot be written, nothing was moved into the
    # store; if the move fails, the transaction rolls the rows back.
    artifact, _ = Artifact.objects.get_or_create(sha256=staged.sha256, defaults={"size": staged.size})
    version = ModelVersion.objects.create(
        model=model,
        version=label,
        major=number[0],
        minor=number[1],
        patch=number[2],
        flavor=data.flavor,
        artifact=artifact,
        artifact_filename=data.artifact_filename[:255],
        input_schema=input_schema,
        output_schema=output_schema,
        input_schema_inferred=data.input_schema is None,
        output_schema_inferred=data.output_schema is None,
        sample_input=instances,
        sample_output=predictions,
        metrics=data.metrics,
        git_commit=data.git_commit,
        data_ref=data.data_ref,
        parameters=data.parameters,
        description=data.description,
        changes=[c.as_dict() for c in changes],
        previous=previous,
        created_by=actor,
    )
    if upload is not None:
        # One upload makes one version: of two registrations racing for it, one wins here.
        claimed = Upload.objects.filter(pk=upload.pk, status=Upload.Status.COMPLETE).update(
            status=Upload.Status.REGISTERED, version=version, updated_at=timezone.now()
        )
        if not claimed:
            if Upload.objects.filter(pk=upload.pk).exists():
                raise Conflict("This upload was registered as another version meanwhile. Upload the file again.")
            raise Gone("This upload expired or was aborted while the model was checked. Upload the file again.")
    stored = staged.commit()
    audit_event_record(
        actor=actor,
        action=AuditAction.MODEL_VERSION_REGISTER,
        target=version,
        team=model.team,
        data={
            "model": model.name,
            "version": label,
            "flavor": data.flavor,
            "sha256": stored.sha256,
            "size": stored.size,
            "deduplicated": not stored.created,
        },
    )
    return version


def artifact_staging_cleanup(*, older_than_seconds: float = 24 * 3600) -> int:
    """Remove staged uploads abandoned by killed processes (run periodically)."""
    return artifact_store().cleanup_staging(older_than_seconds=older_than_seconds)


# ---------------------------------------------------------------- resumable uploads


class UploadRangeError(RangeNotSatisfiable):
    """A chunk that does not start at the upload's current offset (416), saying where it is."""

    def __init__(self, message: str, *, offset: int):
        super().__init__(message, extra={"offset": offset})
        self.offset = offset


def _idle_deadline():
    return timezone.now() + timedelta(hours=settings.UPLOAD_IDLE_HOURS)


def _stored_copy_visible(*, actor: User, sha256: str) -> Artifact | None:
    """The stored artifact with this digest, if the actor may read a version that uses it.

    Skipping the bytes proves nothing about holding them: knowing a digest must not become
    a way to reach a model one cannot see, so only content the actor can already download
    is reused without sending it. Everything else is sent, and still stored once.
    """
    from portal.selectors import model_list

    artifact = Artifact.objects.filter(sha256=sha256).first()
    if artifact is None or not artifact_store().exists(sha256):
        return None
    visible = ModelVersion.objects.filter(artifact=artifact, model__in=model_list(user=actor).values("pk"))
    return artifact if visible.exists() else None


def _check_sha256(value: str, *, field: str = "sha256") -> str:
    value = (value or "").strip().lower()
    if value and not valid_sha256(value):
        raise InvalidInput("sha256 must be 64 hexadecimal characters (the hex digest of the whole file).", field=field)
    return value


@transaction.atomic
def upload_create(*, actor: User, size: int, sha256: str = "", filename: str = "") -> Upload:
    """Open a resumable upload of `size` bytes. If the actor can already read stored content
    with this digest, the upload is complete at once and no bytes need to be sent."""
    if actor.is_service_account:
        raise NotAllowed("Service accounts call services; they do not upload models.")
    if not get_objects_for_user(
        actor, "portal.register_version", klass=RegisteredModel, accept_global_perms=False
    ).exists():
        raise NotAllowed(
            "Uploads are for registering versions, and you may not register a version of any model. "
            "Create the model first (portal models create), or ask a team owner for the member role."
        )
    if size < 1:
        raise InvalidInput("size must be the artifact's length in bytes, at least 1.", field="size")
    if size > settings.ARTIFACT_MAX_BYTES:
        raise PayloadTooLarge(
            f"The artifact is {size} bytes; the limit is {settings.ARTIFACT_MAX_BYTES} bytes. "
            "Ask an admin to raise ARTIFACT_MAX_BYTES if this model really needs it.",
            extra={"limit": settings.ARTIFACT_MAX_BYTES},
        )
    sha256 = _check_sha256(sha256)
    filename = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()[:255]
    if filename in (".", ".."):
        filename = ""
    deadline = _idle_deadline()
    if sha256 and (artifact := _stored_copy_visible(actor=actor, sha256=sha256)) is not None:
        if artifact.size != size:
            raise InvalidInput(
                f"size says {size} bytes, but the content with this sha256 is {artifact.size} bytes.", field="size"
            )
        return Upload.objects.create(
            created_by=actor,
            filename=filename,
            size=size,
            sha256=sha256,
            received=size,
            status=Upload.Status.COMPLETE,
            deduplicated=True,
            expires_at=deadline,
        )
    # Unregistered uploads hold disk until they are registered or swept: bound how many,
    # and how many bytes, one person may hold.
    held = Upload.objects.filter(created_by=actor, deduplicated=False, expires_at__gt=timezone.now()).exclude(
        status=Upload.Status.REGISTERED
    )
    totals = held.aggregate(count=Count("pk"), size=Sum("size"))
    if totals["count"] >= settings.UPLOAD_MAX_OPEN:
        raise Conflict(
            f"You have {settings.UPLOAD_MAX_OPEN} uploads that are not registered. Register or abort some "
            "(GET /api/v1/uploads lists them; portal uploads list) before starting another."
        )
    if (totals["size"] or 0) + size > settings.UPLOAD_MAX_OPEN_BYTES:
        raise Conflict(
            f"Your uploads that are not registered hold {totals['size'] or 0} bytes; with this one they would pass "
            f"the limit of {settings.UPLOAD_MAX_OPEN_BYTES} bytes. Register or abort some first."
        )
    upload = Upload.objects.create(created_by=actor, filename=filename, size=size, sha256=sha256, expires_at=deadline)
    artifact_store().resumable(upload.key).create()
    return upload


def _receiving(upload: Upload) -> None:
    if upload.status != Upload.Status.RECEIVING:
        raise Conflict(
            f"This upload is {upload.get_status_display().lower()}; it takes no more bytes.",
            extra={"offset": upload.size, "status": upload.status},
        )
    if upload.expires_at <= timezone.now():
        raise Gone(f"This upload sat idle until it expired at {upload.expires_at:%Y-%m-%d %H:%M} UTC. Start a new one.")


def upload_append(*, actor: User, upload: Upload, offset: int, chunks: Iterable[bytes]) -> Upload:
    """Append one chunk that starts at `offset`.

    Not one transaction: the body can take a while to arrive and no database lock is held
    meanwhile. The store's file is the truth about the offset; the row follows it.
    """
    _receiving(upload)
    resumable = artifact_store().resumable(upload.key)
    try:
        received = resumable.append(offset=offset, chunks=chunks, limit=upload.size)
    except UploadOffsetMismatch as exc:
        raise UploadRangeError(
            f"This upload holds {exc.offset} bytes, so the next chunk must start at byte {exc.offset}, "
            f"not {offset}. Ask for the offset (GET) and resume from there.",
            offset=exc.offset,
        ) from None
    except UploadBusy:
        raise Conflict(
            "Another chunk of this upload is arriving right now. Wait for it to finish, then ask for the offset."
        ) from None
    except UploadMissing:
        raise Gone("This upload's bytes are gone (it expired or was aborted). Start a new one.") from None
    except ArtifactTooLarge:
        raise UploadRangeError(
            f"The chunk goes past the {upload.size} bytes this upload was created for.",
            offset=resumable.offset(),
        ) from None
    updated = Upload.objects.filter(pk=upload.pk, status=Upload.Status.RECEIVING).update(
        received=received, updated_at=timezone.now(), expires_at=_idle_deadline()
    )
    if not updated:  # aborted or swept while this chunk arrived
        raise Gone("This upload was aborted or expired while the chunk arrived. Start a new one.")
    upload.refresh_from_db()
    return upload


def upload_complete(*, actor: User, upload: Upload, sha256: str = "") -> Upload:
    """Check that every byte arrived and that they hash to the expected digest.

    A mismatch discards the upload: the bytes are not what was meant to be sent, and
    keeping them would only invite registering the wrong model.
    """
    given = _check_sha256(sha256)
    if upload.status == Upload.Status.COMPLETE:
        if given and given != upload.sha256:
            raise InvalidInput(
                f"This upload finished already, and its bytes hash to {upload.sha256}, not {given}. "
                "If that is the wrong file, abort the upload and send the right one.",
                field="sha256",
            )
        return upload  # finishing twice (a retried request) is harmless
    _receiving(upload)
    if given and upload.sha256 and given != upload.sha256:
        raise InvalidInput(
            f"The sha256 sent now ({given}) differs from the one the upload was created with ({upload.sha256}).",
            field="sha256",
        )
    expected = given or upload.sha256
    if not expected:
        raise InvalidInput(
            "Send the file's sha256 to finish the upload; it was not given when it started.", field="sha256"
        )
    resumable = artifact_store().resumable(upload.key)
    try:
        offset = resumable.offset()
        if offset != upload.size:
            raise Conflict(
                f"Only {offset} of {upload.size} bytes have arrived. Send the rest from byte {offset}, then finish.",
                extra={"offset": offset},
            )
        staged = resumable.verify()
    except UploadMissing:
        raise Gone("This upload's bytes are gone (it expired or was aborted). Start a new one.") from None
    if staged.sha256 != expected:
        resumable.discard()
        Upload.objects.filter(pk=upload.pk).delete()
        raise InvalidInput(
            f"The bytes received hash to {staged.sha256}, not {expected}: the file changed while it was sent, or "
            "the digest is not this file's. The upload was discarded; start a new one.",
            field="sha256",
        )
    deduplicated = artifact_store().exists(staged.sha256)
    finished = Upload.objects.filter(pk=upload.pk, status=Upload.Status.RECEIVING).update(
        status=Upload.Status.COMPLETE,
        sha256=staged.sha256,
        received=upload.size,
        deduplicated=deduplicated,
        updated_at=timezone.now(),
        expires_at=_idle_deadline(),
    )
    # Only once the row says so: the store holds this content already, so the upload's
    # copy goes (content is never kept twice).
    if finished and deduplicated:
        resumable.discard()
    try:
        upload.refresh_from_db()
    except Upload.DoesNotExist:
        raise Gone("This upload was aborted while it was being finished.") from None
    return upload


def _upload_staged(*, actor: User, upload: Upload) -> StagedWrite:
    if upload.created_by_id != actor.pk:
        raise NotAllowed("Only the person who uploaded a file may register it.")
    if upload.status == Upload.Status.REGISTERED:
        raise Conflict(
            f"This upload was registered already (as {upload.version or 'a version that was deleted'}). "
            "Upload the file again to register it once more."
        )
    if upload.status != Upload.Status.COMPLETE:
        raise Conflict(
            f"This upload is not finished ({upload.received} of {upload.size} bytes have arrived). "
            "Send the rest and finish it first."
        )
    if upload.expires_at <= timezone.now():
        raise Gone("This upload expired before it was registered. Upload the file again.")
    store = artifact_store()
    if upload.deduplicated:
        return store.stored(upload.sha256, upload.size)
    try:
        return store.resumable(upload.key).finished(sha256=upload.sha256, size=upload.size)
    except UploadMissing:
        if store.exists(upload.sha256):  # moved into the store by a registration that then failed
            return store.stored(upload.sha256, upload.size)
        raise Gone("This upload's bytes are gone. Upload the file again.") from None


@transaction.atomic
def upload_abort(*, actor: User, upload: Upload) -> None:
    if upload.created_by_id != actor.pk:
        raise NotAllowed("Only the person who uploaded a file may abort the upload.")
    if upload.status == Upload.Status.REGISTERED:
        raise Conflict("This upload was registered already; its bytes belong to the version now.")
    Upload.objects.filter(pk=upload.pk).delete()
    if not upload.deduplicated:
        transaction.on_commit(artifact_store().resumable(upload.key).discard)


def upload_cleanup(*, now=None, orphan_grace_seconds: float = 3600) -> int:
    """Sweep uploads that sat idle past their deadline, and bytes no upload row owns.

    Bytes without a row get a grace period: a new upload's file is created inside the
    transaction that creates its row, so for a moment the file exists and the row does
    not (yet) appear to other connections.
    """
    now = now or timezone.now()
    store = artifact_store()
    removed = 0
    for upload in Upload.objects.filter(expires_at__lte=now).only("id", "status", "deduplicated"):
        deleted = Upload.objects.filter(pk=upload.pk, expires_at__lte=now).delete()[0]
        if deleted and upload.status != Upload.Status.REGISTERED and not upload.deduplicated:
            store.resumable(upload.key).discard()
            removed += 1
    known = {u.hex for u in Upload.objects.values_list("id", flat=True)}
    cutoff = time.time() - orphan_grace_seconds
    for key in store.uploads_present() - known:
        if store.upload_mtime(key) < cutoff:
            store.resumable(key).discard()
            removed += 1
    return removed
