"""Django admin for accounts. Changes that matter for security go through the services,
so the admin writes the same audit events as the UI and the API."""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.http import HttpResponseRedirect
from django.urls import reverse

from accounts import services
from accounts.models import (
    ApiToken,
    AuditAction,
    AuditEvent,
    ExternalIdentity,
    Membership,
    SignInSettings,
    Team,
    TeamGroupObjectPermission,
    TeamUserObjectPermission,
    User,
)
from core.errors import PortalError

_AUDITED_USER_FIELDS = ("is_active", "is_staff", "is_superuser", "is_approver")


class ServiceErrorsAdminMixin:
    """Show a service's refusal (e.g. "the last owner cannot leave") as an admin message."""

    def _refusal(self, request, exc: PortalError, redirect_to: str):
        self.message_user(request, exc.message, level=messages.ERROR)
        return HttpResponseRedirect(redirect_to)

    def changeform_view(self, request, *args, **kwargs):
        try:
            return super().changeform_view(request, *args, **kwargs)
        except PortalError as exc:
            return self._refusal(request, exc, request.path)

    def delete_view(self, request, object_id, extra_context=None):
        try:
            return super().delete_view(request, object_id, extra_context)
        except PortalError as exc:
            return self._refusal(request, exc, "../change/")

    def changelist_view(self, request, extra_context=None):
        try:
            return super().changelist_view(request, extra_context)
        except PortalError as exc:
            return self._refusal(request, exc, request.get_full_path())


@admin.register(User)
class UserAdmin(ServiceErrorsAdminMixin, BaseUserAdmin):
    list_display = ("username", "email", "is_service_account", "is_approver", "is_superuser", "is_active", "last_login")
    list_filter = ("is_service_account", "is_approver", "is_superuser", "is_active")
    fieldsets = (
        *BaseUserAdmin.fieldsets,
        ("Portal", {"fields": ("is_service_account", "is_approver")}),
    )

    def save_model(self, request, obj, form, change):
        before = {}
        if change:
            stored = User.objects.get(pk=obj.pk)
            before = {field: getattr(stored, field) for field in _AUDITED_USER_FIELDS}
        super().save_model(request, obj, form, change)
        if change:
            services.user_record_admin_change(actor=request.user, user=obj, before=before)
        else:
            services.audit_event_record(
                actor=request.user,
                action=AuditAction.USER_CREATE,
                target=obj,
                data={"service_account": obj.is_service_account, "via": "admin"},
            )

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        if "groups" in form.changed_data or "user_permissions" in form.changed_data:
            services.audit_event_record(
                actor=request.user,
                action=AuditAction.PERMISSION_GRANT,
                target=form.instance,
                data={
                    "groups": sorted(g.name for g in form.instance.groups.all()),
                    "user_permissions": sorted(p.codename for p in form.instance.user_permissions.all()),
                    "via": "admin",
                },
            )


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    fields = ("user", "role", "managed_by", "created_at")
    readonly_fields = ("user", "role", "managed_by", "created_at")
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Team)
class TeamAdmin(ServiceErrorsAdminMixin, admin.ModelAdmin):
    list_display = ("name", "description", "created_at", "created_by")
    search_fields = ("name", "description")
    inlines = [MembershipInline]

    def get_readonly_fields(self, request, obj=None):
        # A team's name is part of its role groups' names and of URLs people bookmarked.
        return ("name", "created_at", "created_by") if obj else ("created_at", "created_by")

    def has_delete_permission(self, request, obj=None):
        # Teams own models, services and an audit history: they are kept, not deleted.
        return False

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        # A new team needs its role groups and permissions: the service makes them.
        team = services.team_create(actor=request.user, name=obj.name, description=obj.description)
        obj.pk = team.pk
        obj.__dict__.update(team.__dict__)


@admin.register(Membership)
class MembershipAdmin(ServiceErrorsAdminMixin, admin.ModelAdmin):
    list_display = ("team", "user", "role", "managed_by", "created_at")
    list_filter = ("role", "managed_by", "team")
    search_fields = ("team__name", "user__username")
    autocomplete_fields = ("team", "user")

    def get_readonly_fields(self, request, obj=None):
        return ("team", "user", "managed_by", "created_at") if obj else ("managed_by", "created_at")

    def save_model(self, request, obj, form, change):
        # Memberships carry group membership and permissions; the services keep them in step.
        if change:
            services.membership_change_role(actor=request.user, team=obj.team, user=obj.user, role=obj.role)
        else:
            created = services.membership_add(actor=request.user, team=obj.team, user=obj.user, role=obj.role)
            obj.pk = created.pk

    def delete_model(self, request, obj):
        services.membership_remove(actor=request.user, team=obj.team, user=obj.user)

    def delete_queryset(self, request, queryset):
        for membership in queryset.select_related("team", "user"):
            services.membership_remove(actor=request.user, team=membership.team, user=membership.user)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("prefix", "name", "user", "created_at", "expires_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("prefix", "name", "user__username")
    readonly_fields = [f.name for f in ApiToken._meta.fields]
    actions = ["revoke"]

    def has_add_permission(self, request):
        # Tokens are created on the token page, the API or `manage.py create_token`,
        # where the secret can be shown once.
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request, queryset):
        count = sum(services.token_revoke(actor=request.user, token=token) for token in queryset)
        self.message_user(request, f"Revoked {count} token(s).", level=messages.SUCCESS)


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ("created_at", "actor_username", "action", "target_repr", "team_name", "ip", "source")
    list_filter = ("action", "source")
    search_fields = ("actor_username", "target_repr", "team_name", "ip")
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in AuditEvent._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class _ReadOnlyAdmin(admin.ModelAdmin):
    """Object-permission rows are written by the services; the admin shows them for inspection."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(TeamGroupObjectPermission)
class TeamGroupObjectPermissionAdmin(_ReadOnlyAdmin):
    list_display = ("content_object", "group", "permission")
    list_filter = ("permission",)
    search_fields = ("content_object__name", "group__name")


@admin.register(TeamUserObjectPermission)
class TeamUserObjectPermissionAdmin(_ReadOnlyAdmin):
    list_display = ("content_object", "user", "permission")
    list_filter = ("permission",)
    search_fields = ("content_object__name", "user__username")


@admin.register(ExternalIdentity)
class ExternalIdentityAdmin(admin.ModelAdmin):
    """Links to single sign-on and directory accounts. Deleting one unlinks the account: the
    next sign-in through that provider matches (or creates) an account again."""

    list_display = ("user", "source", "subject", "issuer", "last_sign_in_at", "made_approver")
    list_filter = ("source",)
    search_fields = ("user__username", "subject")
    readonly_fields = [f.name for f in ExternalIdentity._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(SignInSettings)
class SignInSettingsAdmin(admin.ModelAdmin):
    """The one row of sign-in settings; changes go through the audited service."""

    fields = ("password_sign_in", "changed_at", "changed_by")
    readonly_fields = ("changed_at", "changed_by")

    def changelist_view(self, request, extra_context=None):
        row = services.sign_in_settings_row()
        return HttpResponseRedirect(reverse("admin:accounts_signinsettings_change", args=[row.pk]))

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return request.user.is_superuser

    def has_view_permission(self, request, obj=None):
        return request.user.is_superuser

    def save_model(self, request, obj, form, change):
        services.sign_in_settings_update(actor=request.user, password_sign_in=obj.password_sign_in)
