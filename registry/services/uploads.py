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
    MAX_PARTS,
    PartCutShort,
    PartsState,
    ResumableUpload,
    StagedWrite,
    UploadBusy,
    UploadIncomplete,
    UploadMissing,
    artifact_store,
    part_count,
    valid_sha256,
)


class UploadRangeError(RangeNotSatisfiable):
    """A chunk that is not one of the upload's parts (416), saying where it stands."""

    def __init__(self, message: str, *, state: PartsState):
        super().__init__(message, extra={"offset": state.offset, "missing": [list(r) for r in state.missing]})
        self.offset = state.offset


def resumable(upload: Upload) -> ResumableUpload:
    return artifact_store().resumable(upload.key, size=upload.size, part_size=upload.part_size)


def _part_size(size: int, asked: int | None) -> int:
    """The part size of a new upload: the one asked for if the store can take it, else the
    default, raised as far as needed to stay within MAX_PARTS."""
    smallest = max(artifact_store().min_part_size, -(-size // MAX_PARTS))
    if asked is None:
        return max(settings.UPLOAD_CHUNK_BYTES, smallest)
    if asked < smallest and part_count(size, asked) > 1:
        raise InvalidInput(
            f"chunk_size must be at least {smallest} bytes for a file of {size} bytes "
            f"(parts other than the last are at least {artifact_store().min_part_size} bytes, "
            f"and an upload has at most {MAX_PARTS} parts).",
            field="chunk_size",
        )
    return asked


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
def upload_create(
    *, actor: User, size: int, sha256: str = "", filename: str = "", chunk_size: int | None = None
) -> Upload:
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
    part_size = _part_size(size, chunk_size)
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
            part_size=part_size,
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
    upload = Upload.objects.create(
        created_by=actor, filename=filename, size=size, sha256=sha256, part_size=part_size, expires_at=deadline
    )
    resumable(upload).create()
    return upload


def upload_registration_refused(*, upload: Upload) -> None:
    """A registration from this finished upload was refused (a version number taken, a
    breaking change, a model that does not load). Keep its bytes for a retry, but only
    UPLOAD_REFUSED_HOURS from now (each refused retry starts that again), never longer than
    an untouched upload is kept: refused tries must not pile up for a day each. The same
    bytes sent again reuse it meanwhile."""
    finished = Upload.objects.filter(pk=upload.pk, status=Upload.Status.COMPLETE).only("updated_at").first()
    if finished is None:
        return
    deadline = min(
        timezone.now() + timedelta(hours=settings.UPLOAD_REFUSED_HOURS),
        finished.updated_at + timedelta(hours=settings.UPLOAD_IDLE_HOURS),
    )
    Upload.objects.filter(pk=upload.pk, status=Upload.Status.COMPLETE).update(expires_at=deadline)


def _receiving(upload: Upload) -> None:
    if upload.status != Upload.Status.RECEIVING:
        raise Conflict(
            f"This upload is {upload.get_status_display().lower()}; it takes no more bytes.",
            extra={"offset": upload.size, "status": upload.status},
        )
    if upload.expires_at <= timezone.now():
        raise Gone(f"This upload sat idle until it expired at {upload.expires_at:%Y-%m-%d %H:%M} UTC. Start a new one.")


def upload_put_part(*, actor: User, upload: Upload, start: int, end: int, chunks: Iterable[bytes]) -> Upload:
    """Write the part that spans bytes `start`-`end` (END inclusive), in any order.

    Not one transaction: the body can take a while to arrive and no database lock is held
    meanwhile. The store knows which parts arrived; the row follows it. A part that had
    arrived already is taken again without writing (a retry whose answer was lost).
    """
    _receiving(upload)
    store = resumable(upload)
    try:
        state = store.parts()
        number, remainder = divmod(start, upload.part_size)
        if remainder or number >= state.count or end != state.bounds(number)[1] - 1:
            part = min(number, state.count - 1)
            first, stop = state.bounds(part)
            raise UploadRangeError(
                f"Send this upload in parts of {upload.part_size} bytes, each starting at a multiple of it "
                f"(the last one ends at byte {upload.size - 1}): the part holding byte {start} is bytes "
                f"{first}-{stop - 1}, not {start}-{end}.",
                state=state,
            )
        store.put_part(number=number, chunks=chunks)
        state = store.parts()
    except PartCutShort:
        raise InvalidInput(
            f"The part at bytes {start}-{end} was cut short, so it was not kept. Send it again whole.",
            extra={"offset": store.parts().offset, "missing": [list(r) for r in store.parts().missing]},
        ) from None
    except UploadBusy:
        raise Conflict(
            f"The part at bytes {start}-{end} is arriving right now in another request. Wait for it to finish, "
            "then ask which parts are missing."
        ) from None
    except UploadMissing:
        raise Gone("This upload's bytes are gone (it expired or was aborted). Start a new one.") from None
    updated = Upload.objects.filter(pk=upload.pk, status=Upload.Status.RECEIVING).update(
        received=state.received_bytes, updated_at=timezone.now(), expires_at=_idle_deadline()
    )
    if not updated:  # aborted or swept while this part arrived
        raise Gone("This upload was aborted or expired while the part arrived. Start a new one.")
    upload.refresh_from_db()
    return upload


@transaction.atomic
def upload_set_digest(*, actor: User, upload: Upload, sha256: str) -> Upload:
    """Say the file's sha256 while its parts are still on the way (a client hashes as it sends).

    If the actor can already read stored content with this digest, the upload is complete
    at once, its parts are dropped, and nothing more needs to be sent.
    """
    given = _check_sha256(sha256)
    if not given:
        raise InvalidInput("Send the file's sha256 (64 hexadecimal characters).", field="sha256")
    upload = Upload.objects.select_for_update().get(pk=upload.pk)
    if upload.sha256 and upload.sha256 != given:
        raise InvalidInput(
            f"This upload is for content with sha256 {upload.sha256}, not {given}. "
            "If that is the wrong file, abort the upload and send the right one.",
            field="sha256",
        )
    if upload.status != Upload.Status.RECEIVING:
        return upload
    _receiving(upload)
    artifact = _stored_copy_visible(actor=actor, sha256=given)
    if artifact is not None and artifact.size == upload.size:
        Upload.objects.filter(pk=upload.pk).update(
            sha256=given,
            received=upload.size,
            status=Upload.Status.COMPLETE,
            deduplicated=True,
            updated_at=timezone.now(),
            expires_at=_idle_deadline(),
        )
        transaction.on_commit(resumable(upload).discard)
    else:
        Upload.objects.filter(pk=upload.pk).update(sha256=given, updated_at=timezone.now())
    upload.refresh_from_db()
    return upload


def _ranges(ranges: list[tuple[int, int]], shown: int = 5) -> str:
    text = ", ".join(f"{start}-{end}" for start, end in ranges[:shown])
    return text + (f" and {len(ranges) - shown} more ranges" if len(ranges) > shown else "")


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
    store = resumable(upload)
    try:
        staged = store.verify()
    except UploadIncomplete as exc:
        state = store.parts()
        raise Conflict(
            f"Only {state.received_bytes} of {upload.size} bytes have arrived. Send the missing parts "
            f"(bytes {_ranges(exc.missing)}), then finish.",
            extra={"offset": state.offset, "missing": [list(r) for r in exc.missing]},
        ) from None
    except UploadBusy:
        raise Conflict("The upload's digest is still being computed. Ask again to finish it in a moment.") from None
    except UploadMissing:
        raise Gone("This upload's bytes are gone (it expired or was aborted). Start a new one.") from None
    if staged.sha256 != expected:
        store.discard()
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
        store.discard()
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
        return resumable(upload).finished(sha256=upload.sha256, size=upload.size)
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
        transaction.on_commit(resumable(upload).discard)


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
