"""The model registry: registered models, their versions and content-addressed artifacts."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase

from accounts.models import Team


class Flavor(models.TextChoices):
    SKLEARN = "sklearn", "scikit-learn (joblib or pickle)"
    ONNX = "onnx", "ONNX"
    PYFUNC = "pyfunc", "Python function (a .py file defining predict(instances))"


class Artifact(models.Model):
    """Bytes stored once under their sha256, however many versions use them."""

    sha256 = models.CharField(max_length=64, unique=True)
    size = models.BigIntegerField()
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"sha256:{self.sha256[:12]}… ({self.size} bytes)"


class RegisteredModel(models.Model):
    name = models.SlugField(max_length=100, unique=True, help_text="Lowercase letters, digits and hyphens.")
    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="models")
    description = models.TextField(blank=True, help_text="Markdown.")
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["name"]
        permissions = [("register_version", "Can register new versions")]

    def __str__(self) -> str:
        return self.name


class RegisteredModelUserObjectPermission(UserObjectPermissionBase):
    content_object = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE)


class RegisteredModelGroupObjectPermission(GroupObjectPermissionBase):
    content_object = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE)


class ModelVersion(models.Model):
    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="versions")
    version = models.CharField(max_length=40)
    major = models.PositiveIntegerField()
    minor = models.PositiveIntegerField()
    patch = models.PositiveIntegerField()
    flavor = models.CharField(max_length=16, choices=Flavor.choices)
    artifact = models.ForeignKey(Artifact, on_delete=models.PROTECT, related_name="versions")
    artifact_filename = models.CharField(max_length=255, blank=True)
    input_schema = models.JSONField(default=dict)
    output_schema = models.JSONField(default=dict)
    input_schema_inferred = models.BooleanField(default=False)
    output_schema_inferred = models.BooleanField(default=False)
    sample_input = models.JSONField(null=True, blank=True, help_text="A list of instances.")
    sample_output = models.JSONField(null=True, blank=True, help_text="What the model predicted for the sample.")
    metrics = models.JSONField(default=dict, blank=True)
    task = models.CharField(
        max_length=20,
        choices=[("classification", "classification"), ("regression", "regression")],
        blank=True,
        help_text="What live quality is measured as; declared at registration or inferred from the outputs.",
    )
    reference = models.JSONField(
        null=True,
        blank=True,
        help_text="The profile of the reference data live inputs are compared with (registry.reference); "
        "none: the sample input.",
    )
    git_commit = models.CharField(max_length=64, blank=True)
    data_ref = models.CharField(max_length=500, blank=True, help_text="Where the training data came from.")
    parameters = models.JSONField(default=dict, blank=True)
    description = models.TextField(blank=True, help_text="Markdown: the model card of this version.")
    changes = models.JSONField(default=list, blank=True, help_text="Schema changes against the previous version.")
    previous = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The version the changes are measured against.",
    )
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-major", "-minor", "-patch"]
        constraints = [
            models.UniqueConstraint(fields=["model", "major", "minor", "patch"], name="modelversion_unique_semver"),
        ]
        indexes = [models.Index(fields=["model", "major", "minor", "patch"])]

    def __str__(self) -> str:
        return f"{self.model.name} {self.version}"

    @property
    def semver(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)

    @property
    def breaking_changes(self) -> list[dict]:
        return [c for c in self.changes if c.get("breaking")]


class Upload(models.Model):
    """A resumable upload of one artifact, sent in chunks over as many requests as it takes.

    The bytes live in the artifact store under this upload's key; the row says whose they
    are, how many are expected, with which digest, and until when the session may idle
    before it is swept. A finished upload is referenced by a registration, which moves its
    bytes into the store under their sha256.
    """

    class Status(models.TextChoices):
        RECEIVING = "receiving", "Receiving chunks"
        COMPLETE = "complete", "Complete; waiting to be registered"
        REGISTERED = "registered", "Registered"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    filename = models.CharField(max_length=255, blank=True)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64, blank=True, help_text="Expected digest; verified when finished.")
    part_size = models.BigIntegerField(
        default=16 * 1024 * 1024, help_text="Bytes per part: every part but the last is this long."
    )
    received = models.BigIntegerField(default=0, help_text="Bytes of the parts received, as of the last one.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RECEIVING)
    deduplicated = models.BooleanField(default=False, help_text="The content was stored already; no bytes sent.")
    version = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["created_by", "status"]), models.Index(fields=["expires_at"])]

    def __str__(self) -> str:
        return f"upload {self.id} ({self.received}/{self.size} bytes, {self.status})"

    @property
    def key(self) -> str:
        return self.id.hex
