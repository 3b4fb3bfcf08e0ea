"""Writes for the model registry, by sub-domain: registered models, their versions, and the
resumable uploads that carry a version's bytes. Callers import from here."""

from registry.services.models import registered_model_create, registered_model_update
from registry.services.uploads import (
    UploadRangeError,
    upload_abort,
    upload_cleanup,
    upload_complete,
    upload_create,
    upload_put_part,
    upload_set_digest,
    upload_staged,
)
from registry.services.versions import (
    BreakingChange,
    VersionInput,
    artifact_staging_cleanup,
    model_version_register,
    version_reference_check,
    version_reference_set,
    version_register_check,
)

__all__ = [
    "BreakingChange",
    "UploadRangeError",
    "VersionInput",
    "artifact_staging_cleanup",
    "model_version_register",
    "registered_model_create",
    "registered_model_update",
    "upload_abort",
    "upload_cleanup",
    "upload_complete",
    "upload_create",
    "upload_put_part",
    "upload_set_digest",
    "upload_staged",
    "version_reference_check",
    "version_reference_set",
    "version_register_check",
]
