"""Django admin for deployments. Approvals and rejections go through the same services as
the approval screens, with a comment, so four eyes and the audit log hold here too."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.template.response import TemplateResponse

from core.errors import PortalError
from deployments import services
from deployments.models import AccessRequest, Deployment, DeploymentEvent, Environment, Grant, Instance, Service
from deployments.runtime import BackendUnavailable, get_backend


@admin.register(Environment)
class EnvironmentAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "requires_approval",
        "runtime",
        "max_replicas",
        "placement",
        "allow_unsandboxed",
        "allow_scale_to_zero",
        "backend_status",
    )
    list_editable = ("requires_approval", "runtime", "max_replicas")
    ordering = ("order",)

    @admin.display(description="Runtime backend")
    def backend_status(self, obj: Environment) -> str:
        try:
            get_backend(obj.runtime)
        except BackendUnavailable as exc:
            return f"unavailable: {exc}"
        return "available"

    def save_model(self, request, obj, form, change):
        if change:
            changed = {name: form.cleaned_data[name] for name in form.changed_data}
            stored = Environment.objects.get(pk=obj.pk)
            services.environment_update(actor=request.user, environment=stored, **changed)
        else:
            super().save_model(request, obj, form, change)


@admin.register(Service)
class ServiceAdmin(admin.ModelAdmin):
    list_display = ("name", "team", "model", "max_instances", "created_at")
    search_fields = ("name", "team__name", "model__name")
    readonly_fields = ("name", "team", "model", "created_at", "created_by")

    def has_add_permission(self, request):
        return False  # services are created on the services page or the API, which grant permissions

    def save_model(self, request, obj, form, change):
        # Through the service function: audited, and a new cap reaches the gateways at once.
        changed = {name: form.cleaned_data[name] for name in form.changed_data}
        services.service_update(actor=request.user, service=Service.objects.get(pk=obj.pk), **changed)


class EventInline(admin.TabularInline):
    model = DeploymentEvent
    extra = 0
    can_delete = False
    readonly_fields = ("created_at", "level", "from_status", "to_status", "message", "actor")
    fields = readonly_fields

    def has_add_permission(self, request, obj=None):
        return False


class DecisionForm(forms.Form):
    comment = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}))


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = ("id", "service", "version", "environment", "status", "requested_by", "decided_by", "created_at")
    list_filter = ("status", "strategy", "environment")
    search_fields = ("service__name", "requested_by__username")
    readonly_fields = [f.name for f in Deployment._meta.fields]
    inlines = [EventInline]
    actions = ["approve", "reject"]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def _decide(self, request, queryset, action: str):
        if "apply" in request.POST:
            form = DecisionForm(request.POST)
            form.is_valid()
            comment = form.cleaned_data.get("comment", "")
            done = 0
            for deployment in queryset:
                try:
                    if action == "approve":
                        services.deployment_approve(actor=request.user, deployment=deployment, comment=comment)
                    else:
                        services.deployment_reject(actor=request.user, deployment=deployment, comment=comment)
                    done += 1
                except PortalError as exc:
                    self.message_user(request, f"#{deployment.pk}: {exc.message}", level=messages.ERROR)
            if done:
                self.message_user(request, f"{action.capitalize()}d {done} deployment(s).", level=messages.SUCCESS)
            return None
        return TemplateResponse(
            request,
            "admin/deployments/decide.html",
            {
                **self.admin_site.each_context(request),
                "title": f"{action.capitalize()} deployments",
                "action": action,
                "deployments": queryset,
                "form": DecisionForm(),
                "opts": self.model._meta,
            },
        )

    @admin.action(description="Approve selected deployments (with a comment)")
    def approve(self, request, queryset):
        return self._decide(request, queryset, "approve")

    @admin.action(description="Reject selected deployments (with a comment)")
    def reject(self, request, queryset):
        return self._decide(request, queryset, "reject")


@admin.register(Instance)
class InstanceAdmin(admin.ModelAdmin):
    list_display = ("name", "deployment", "backend", "state", "url", "restarts")
    list_filter = ("state", "backend")
    readonly_fields = [f.name for f in Instance._meta.fields]

    def has_add_permission(self, request):
        return False


@admin.register(Grant)
class GrantAdmin(admin.ModelAdmin):
    list_display = (
        "service",
        "user",
        "team",
        "permission",
        "expires_at",
        "rate_per_second",
        "burst",
        "daily_quota",
        "created_at",
        "created_by",
    )
    readonly_fields = [f.name for f in Grant._meta.fields]

    def has_add_permission(self, request):
        return False

    def delete_model(self, request, obj):
        services.grant_revoke(actor=request.user, grant=obj)

    def delete_queryset(self, request, queryset):
        for grant in queryset:
            services.grant_revoke(actor=request.user, grant=grant)


@admin.register(AccessRequest)
class AccessRequestAdmin(admin.ModelAdmin):
    """Read-only: requests are decided on the Access requests page or the API, which grant and audit."""

    list_display = ("id", "service", "requester", "service_account", "status", "created_at", "decided_by", "expires_at")
    list_filter = ("status",)
    search_fields = ("service__name", "requester__username", "service_account__username", "reason")
    readonly_fields = [f.name for f in AccessRequest._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
