from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import AbstractUser, Group
from django.db import models
from django.utils import timezone
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase


class User(AbstractUser):
    """A person, or a service account (a consumer's backend) that only ever uses API tokens."""

    is_service_account = models.BooleanField(
        default=False,
        help_text="Service accounts hold API tokens but cannot sign in to the web UI.",
    )
    is_approver = models.BooleanField(
        default=False,
        help_text="Approvers (IT) may approve or reject deployments that need approval.",
    )

    class Meta:
        ordering = ["username"]

    @property
    def is_admin(self) -> bool:
        return self.is_active and self.is_superuser

    @property
    def kind(self) -> str:
        return "service account" if self.is_service_account else "person"


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    MAINTAINER = "maintainer", "Maintainer"
    MEMBER = "member", "Member"
    VIEWER = "viewer", "Viewer"


# Higher ranks may do everything lower ranks may.
ROLE_RANK = {Role.VIEWER: 0, Role.MEMBER: 1, Role.MAINTAINER: 2, Role.OWNER: 3}


class Team(models.Model):
    """A team owns models and services.

    Each role of a team has its own auth group. Object permissions are granted to those
    groups, so a membership change is a group change and every object the team owns follows.
    """

    name = models.SlugField(max_length=64, unique=True, help_text="Lowercase letters, digits and hyphens.")
    description = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    owners_group = models.OneToOneField(Group, on_delete=models.PROTECT, related_name="+", editable=False)
    maintainers_group = models.OneToOneField(Group, on_delete=models.PROTECT, related_name="+", editable=False)
    members_group = models.OneToOneField(Group, on_delete=models.PROTECT, related_name="+", editable=False)
    viewers_group = models.OneToOneField(Group, on_delete=models.PROTECT, related_name="+", editable=False)

    class Meta:
        ordering = ["name"]
        permissions = [
            ("manage_members", "Can add, change and remove team members"),
            ("create_model", "Can register new models owned by the team"),
        ]

    def __str__(self) -> str:
        return self.name

    def group_for(self, role: str) -> Group:
        return getattr(self, f"{Role(role).value}s_group")


class IdentitySource(models.TextChoices):
    """Where a person's identity and groups come from, besides the portal's own accounts."""

    OIDC = "oidc", "Single sign-on (OpenID Connect)"
    LDAP = "ldap", "Company directory (LDAP)"


class Membership(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(default=timezone.now)
    # Blank: made by a person in the portal, and never touched by a sign-in. Otherwise the
    # directory whose groups made it; each sign-in through it adds, changes and removes
    # only the memberships it made.
    managed_by = models.CharField(
        max_length=8,
        choices=IdentitySource.choices,
        blank=True,
        default="",
        help_text="Blank when made in the portal; else the directory whose groups keep it up to date.",
    )

    class Meta:
        ordering = ["team__name", "user__username"]
        constraints = [models.UniqueConstraint(fields=["team", "user"], name="membership_unique_team_user")]

    def __str__(self) -> str:
        return f"{self.user} is {self.role} of {self.team}"


class ExternalIdentity(models.Model):
    """A person's account at the company's identity provider or directory, linked to a user.

    Sign-ins through single sign-on find the user by (issuer, subject) first, so the link
    survives a change of email or username at the provider.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="external_identities")
    source = models.CharField(max_length=8, choices=IdentitySource.choices)
    issuer = models.CharField(max_length=300, blank=True, help_text="The OpenID Connect issuer; blank for LDAP.")
    subject = models.CharField(max_length=300, help_text="The provider's subject (sub), or the directory username.")
    groups = models.JSONField(default=list, blank=True, help_text="The groups the last sign-in brought.")
    # True while the approver role is the directory's doing (an approver group), so that
    # leaving the group takes it away again; an approver made by hand stays one.
    made_approver = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    last_sign_in_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["source", "subject"]
        constraints = [
            models.UniqueConstraint(fields=["source", "issuer", "subject"], name="external_identity_unique_subject")
        ]
        verbose_name_plural = "external identities"

    def __str__(self) -> str:
        return f"{self.get_source_display()} {self.subject} → {self.user}"


class SignInSettings(models.Model):
    """The portal's sign-in settings: one row, changed by admins (audited)."""

    password_sign_in = models.BooleanField(
        default=True,
        verbose_name="Local password sign-in",
        help_text=(
            "Off: the sign-in page offers only single sign-on (and the company directory, when configured), "
            "and local passwords are refused, except for superusers at /admin/login/."
        ),
    )
    changed_at = models.DateTimeField(null=True, blank=True)
    changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        verbose_name = verbose_name_plural = "sign-in settings"

    def __str__(self) -> str:
        return "Sign-in settings"


class TeamUserObjectPermission(UserObjectPermissionBase):
    content_object = models.ForeignKey(Team, on_delete=models.CASCADE)


class TeamGroupObjectPermission(GroupObjectPermissionBase):
    content_object = models.ForeignKey(Team, on_delete=models.CASCADE)


class TokenScope(models.TextChoices):
    READ = "read", "Read the API"
    WRITE = "write", "Change things through the API"
    INVOKE = "invoke", "Call services through the gateway"


class ApiTokenQuerySet(models.QuerySet):
    def active(self) -> ApiTokenQuerySet:
        now = timezone.now()
        return self.filter(revoked_at__isnull=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )


class ApiToken(models.Model):
    """An API token. Only the sha256 digest of the secret is stored; the secret is shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True, editable=False, help_text="Visible start of the token.")
    digest = models.CharField(max_length=64, unique=True, editable=False)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and not self.is_expired

    @property
    def state(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.is_expired:
            return "expired"
        return "active"


class AuditAction(models.TextChoices):
    LOGIN = "auth.login", "Signed in"
    LOGIN_FAILED = "auth.login_failed", "Failed sign-in"
    LOGIN_THROTTLED = "auth.login_throttled", "Sign-in refused: too many attempts"
    LOGOUT = "auth.logout", "Signed out"
    USER_CREATE = "user.create", "User created"
    USER_CHANGE = "user.change", "User roles or status changed"
    TOKEN_CREATE = "token.create", "Token created"
    TOKEN_REVOKE = "token.revoke", "Token revoked"
    TEAM_CREATE = "team.create", "Team created"
    MEMBERSHIP_ADD = "membership.add", "Member added"
    MEMBERSHIP_CHANGE = "membership.change", "Member's role changed"
    MEMBERSHIP_REMOVE = "membership.remove", "Member removed"
    PERMISSION_GRANT = "permission.grant", "Permission granted"
    PERMISSION_REVOKE = "permission.revoke", "Permission revoked"
    PERMISSION_CHANGE = "permission.change", "Grant's limits or expiry changed"
    PERMISSION_EXPIRE = "permission.expire", "Grant expired"
    ACCESS_REQUEST_CREATE = "access_request.create", "Access requested"
    ACCESS_REQUEST_APPROVE = "access_request.approve", "Access request approved"
    ACCESS_REQUEST_REJECT = "access_request.reject", "Access request rejected"
    ACCESS_REQUEST_WITHDRAW = "access_request.withdraw", "Access request withdrawn"
    SIGN_IN_SETTINGS_CHANGE = "auth.settings_change", "Sign-in settings changed"
    MODEL_CREATE = "model.create", "Model registered"
    MODEL_CHANGE = "model.change", "Model changed"
    MODEL_VERSION_REGISTER = "model_version.register", "Model version registered"
    MODEL_VERSION_REFERENCE = "model_version.reference", "Reference data of a version set"
    SERVICE_CREATE = "service.create", "Service created"
    SERVICE_CHANGE = "service.change", "Service changed"
    SERVICE_DEPRECATE = "service.deprecate", "Major version deprecated"
    SERVICE_UNDEPRECATE = "service.undeprecate", "Major version no longer deprecated"
    DEPLOYMENT_REQUEST = "deployment.request", "Deployment requested"
    DEPLOYMENT_APPROVE = "deployment.approve", "Deployment approved"
    DEPLOYMENT_REJECT = "deployment.reject", "Deployment rejected"
    DEPLOYMENT_CANCEL = "deployment.cancel", "Deployment cancelled"
    DEPLOYMENT_ROLLBACK = "deployment.rollback", "Deployment rolled back"
    DEPLOYMENT_SCALE = "deployment.scale", "Deployment scaled"
    DEPLOYMENT_LIVE = "deployment.live", "Deployment went live"
    DEPLOYMENT_FAILED = "deployment.failed", "Deployment failed"
    DEPLOYMENT_PROMOTE = "deployment.promote", "Canary or shadow promoted"
    DEPLOYMENT_PAUSE = "deployment.pause", "Canary paused"
    DEPLOYMENT_RESUME = "deployment.resume", "Canary resumed"
    DEPLOYMENT_ABORT = "deployment.abort", "Canary or shadow aborted"
    DEPLOYMENT_AUTO_ROLLBACK = "deployment.auto_rollback", "Candidate rolled back on a regression"
    ENVIRONMENT_CHANGE = "environment.change", "Environment changed"
    RUNTIME_ORPHAN_REMOVE = "runtime.orphan_remove", "Instance nothing owned removed"
    MONITORING_CHANGE = "monitoring.change", "Drift thresholds changed"
    ALERT_RULE_CREATE = "alert_rule.create", "Alert rule created"
    ALERT_RULE_CHANGE = "alert_rule.change", "Alert rule changed"
    ALERT_RULE_DELETE = "alert_rule.delete", "Alert rule deleted"
    WEBHOOK_CREATE = "webhook.create", "Webhook added"
    WEBHOOK_DELETE = "webhook.delete", "Webhook removed"
    WEBHOOK_CHANGE = "webhook.change", "Webhook's events changed"


class AppendOnlyError(Exception):
    pass


class AuditEventQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnlyError("The audit log is append-only.")

    def delete(self):
        raise AppendOnlyError("The audit log is append-only.")


class AuditEvent(models.Model):
    """Append-only record of a security- or production-relevant action.

    Names are copied at write time (actor_username, team_name, target_repr) and the
    foreign keys carry no database constraint, so the record reads the same after the
    objects it mentions are renamed or deleted, and never blocks or changes with them.
    """

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    actor_username = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=40, choices=AuditAction.choices, db_index=True)
    target_type = models.CharField(max_length=40, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    target_repr = models.CharField(max_length=200, blank=True)
    team = models.ForeignKey(
        Team, null=True, blank=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    team_name = models.CharField(max_length=64, blank=True)
    data = models.JSONField(default=dict, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)
    source = models.CharField(max_length=16, blank=True, help_text="web, api, admin, cli or task")

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["team", "-created_at"]), models.Index(fields=["actor", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_username or '-'} {self.action} {self.target_repr}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnlyError("The audit log is append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("The audit log is append-only.")
