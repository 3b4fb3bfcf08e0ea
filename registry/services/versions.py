"""Writes for model versions.

Registering a version is the heart of the registry: nothing is recorded unless the artifact's
digest matches, the version is new and higher, the schemas are real JSON Schemas, the model
loads and predicts its sample input in a separate limited process, and the schema change is
allowed for the version number. Then the artifact is committed (stored once per digest) and
the version row is written, with its audit event, in one short transaction.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.utils import timezone

from accounts.models import AuditAction, User
from accounts.services import audit_event_record
from core.errors import (
    Conflict,
    Gone,
    InvalidInput,
    NotAllowed,
    PortalError,
)
from registry import reference, schemas, semver
from registry.model_check import ModelCheck, check_can_run, model_check
from registry.models import Artifact, Flavor, ModelVersion, RegisteredModel, Upload
from registry.services.uploads import quota_check, upload_registration_refused, upload_staged
from registry.storage import (
    StagedWrite,
    artifact_store,
    valid_sha256,
)


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
    task: str = ""  # classification or regression; inferred from the output schema if empty


class BreakingChange(Conflict):
    pass


def _latest(model: RegisteredModel, *, major: int | None = None) -> ModelVersion | None:
    versions = ModelVersion.objects.filter(model=model)
    if major is not None:
        versions = versions.filter(major=major)
    return versions.order_by("-major", "-minor", "-patch").first()


def _next_major(model: RegisteredModel) -> int:
    """The major a breaking version can start: one above the highest major, so that
    _check_order accepts it whatever older majors exist."""
    latest = _latest(model)
    return latest.major + 1 if latest is not None else 1


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
    if problem := schemas.instances_problem(instances):
        raise InvalidInput(problem, field="sample_input")
    input_schema = data.input_schema if data.input_schema is not None else schemas.infer(instances)
    if data.input_schema is None and (problem := schemas.schema_problem(input_schema)):
        raise InvalidInput(
            f"The input schema inferred from the sample input is too large to serve: {problem} "
            "Declare an input_schema.",
            field="sample_input",
        )
    if data.input_schema is not None and (errors := schemas.validation_errors(input_schema, instances)):
        raise InvalidInput(
            "The sample input does not match the input schema: " + "; ".join(errors), field="sample_input"
        )
    return number, instances, input_schema


def version_register_check(*, actor: User, model: RegisteredModel) -> None:
    """Raise NotAllowed unless the actor may register versions of `model`, and Unavailable
    if the load check cannot run here. The upload paths call it before they read an
    artifact's bytes or start a check process."""
    if not actor.is_authenticated or not actor.has_perm("registry.register_version", model):
        raise NotAllowed(f"Only owners, maintainers and members of team '{model.team.name}' may register versions.")
    check_can_run()


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
    version_register_check(actor=actor, model=model)
    schemas.task_of(None, declared=data.task)  # a task that is not one: refused before the check runs
    if (staged is None) == (upload is None):
        raise InvalidInput("Send the artifact, or the id of a finished upload, not both.", field="upload")
    if upload is not None:
        staged = upload_staged(actor=actor, upload=upload)
        data.artifact_filename = data.artifact_filename or upload.filename
        try:
            return _register(actor=actor, model=model, data=data, staged=staged, check=check, upload=upload)
        except PortalError:
            upload_registration_refused(upload=upload)
            raise
        finally:
            # The upload's bytes stay for a retry; what goes is any local copy made for the
            # check (the S3 store fetches one), whether the registration succeeded or not.
            staged.discard()
    return _register(actor=actor, model=model, data=data, staged=staged, check=check, upload=None)


def _register(
    *,
    actor: User,
    model: RegisteredModel,
    data: VersionInput,
    staged: StagedWrite,
    check: ModelCheck | None,
    upload: Upload | None,
) -> ModelVersion:
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
    if problem := schemas.instances_problem(predictions, what="A prediction for the sample input"):
        raise InvalidInput(problem, field="artifact")
    output_schema = data.output_schema if data.output_schema is not None else schemas.infer(predictions)
    if data.output_schema is None and (problem := schemas.schema_problem(output_schema)):
        raise InvalidInput(
            f"The output schema inferred from the model's predictions is too large to serve: {problem} "
            "Declare an output_schema.",
            field="output_schema",
        )
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
                f"{'s' if len(breaking) != 1 else ''} in its schema. Register it as {_next_major(model)}.0.0 "
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

    quota_check(actor=actor, sha256=staged.sha256, size=staged.size)
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
        task=schemas.task_of(output_schema, predictions, declared=data.task),
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


def version_reference_check(*, actor: User, model: RegisteredModel) -> None:
    """Raise NotAllowed unless the actor may set reference data (before a file is read)."""
    if not actor.has_perm("registry.register_version", model):
        raise NotAllowed(f"Only owners, maintainers and members of team '{model.team.name}' may set reference data.")


def version_reference_set(*, actor: User, version: ModelVersion, filename: str, data: bytes) -> ModelVersion:
    """Give a version the reference data its live inputs are compared with (replacing any
    earlier one): a CSV, Parquet or JSON file of inputs, kept as a profile per feature."""
    model = version.model
    version_reference_check(actor=actor, model=model)
    profile = reference.profile_from_file(
        input_schema=version.input_schema, filename=filename, data=data, created_by=actor.username
    )
    version.reference = profile
    version.save(update_fields=["reference"])
    audit_event_record(
        actor=actor,
        action=AuditAction.MODEL_VERSION_REFERENCE,
        target=version,
        team=model.team,
        data={"model": model.name, "version": version.version, "rows": profile["rows"], "sha256": profile["sha256"]},
    )
    return version
