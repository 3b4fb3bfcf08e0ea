"""Writes for resumable uploads: one artifact received over as many requests as it takes.

An upload is opened with its size (and digest, if known), takes chunks at the offset the
store holds, is finished once every byte arrived and hashes to the expected digest, and is
then referenced by a registration (registry.services.versions), which moves its bytes into
the store. Idle uploads and bytes no upload owns are swept periodically.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Sum
from django.template.defaultfilters import filesizeformat
from django.utils import timezone
from guardian.shortcuts import get_objects_for_user

from accounts.models import User
from core.errors import (
    Conflict,
    Gone,
    InvalidInput,
    NotAllowed,
    PayloadTooLarge,
    RangeNotSatisfiable,
)
from registry.models import Artifact, ModelVersion, RegisteredModel, Upload
from registry.selectors import artifact_bytes_used, model_list
from registry.storage import (
    ArtifactTooLarge,
    StagedWrite,
    UploadBusy,
    UploadMissing,
    UploadOffsetMismatch,
    artifact_store,
    valid_sha256,
)


class UploadRangeError(RangeNotSatisfiable):
    """A chunk that does not start at the upload's current offset (416), saying where it is."""

    def __init__(self, message: str, *, offset: int):
        super().__init__(message, extra={"offset": offset})
        self.offset = offset


def _size(n: int) -> str:
    return filesizeformat(n).replace("\xa0", " ")


def quota_check(*, actor: User, sha256: str, size: int) -> None:
    """Refuse (413) an artifact that would take the actor past ARTIFACT_QUOTA_BYTES. Content
    they already hold in a version of theirs adds nothing and always passes."""
    quota = settings.ARTIFACT_QUOTA_BYTES
    if not quota:
        return
    used, held = artifact_bytes_used(user=actor, sha256=sha256)
    if not held and used + size > quota:
        raise PayloadTooLarge(
            f"Your registered versions hold {_size(used)} of your {_size(quota)} quota, and this artifact "
            f"({_size(size)}) would pass it. Ask an admin to raise ARTIFACT_QUOTA_BYTES.",
            extra={"quota": quota, "used": used},
        )


def _idle_deadline():
    return timezone.now() + timedelta(hours=settings.UPLOAD_IDLE_HOURS)


def _stored_copy_visible(*, actor: User, sha256: str) -> Artifact | None:
    """The stored artifact with this digest, if the actor may read a version that uses it.

    Skipping the bytes proves nothing about holding them: knowing a digest must not become
    a way to reach a model one cannot see, so only content the actor can already download
    is reused without sending it. Everything else is sent, and still stored once.
    """
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
        actor, "registry.register_version", klass=RegisteredModel, accept_global_perms=False
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
    quota_check(actor=actor, sha256=sha256, size=size)  # before a byte is sent
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


def upload_staged(*, actor: User, upload: Upload) -> StagedWrite:
    """The bytes of a finished upload of the actor's, for a registration to commit."""
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
