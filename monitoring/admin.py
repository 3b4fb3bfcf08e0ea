"""Monitoring in the Django admin: what was notified and delivered, read-only (webhooks and
people's choices are changed on their pages and API, which check permissions and audit)."""

from django.contrib import admin

from monitoring.models import Notification, Webhook, WebhookDelivery


class _ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Notification)
class NotificationAdmin(_ReadOnly):
    list_display = ("subject", "type", "created_at", "sent_at", "emailed")
    list_filter = ("type",)
    search_fields = ("subject", "key")
    date_hierarchy = "created_at"


@admin.register(Webhook)
class WebhookAdmin(_ReadOnly):
    list_display = ("__str__", "service", "active", "created_at")
    list_filter = ("active",)
    search_fields = ("service__name",)
    # Never the URL (its path or query may be a secret) nor the signing secret.
    fields = ("service", "host", "events", "active", "created_at", "created_by")
    readonly_fields = fields


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(_ReadOnly):
    list_display = ("id", "webhook", "event_type", "state", "attempts", "response_status", "created_at")
    list_filter = ("event_type", "state")
    fields = (
        "webhook",
        "event_type",
        "event",
        "notification",
        "state",
        "attempts",
        "response_status",
        "error",
        "created_at",
        "last_attempt_at",
        "next_attempt_at",
        "body",
    )
    readonly_fields = fields
