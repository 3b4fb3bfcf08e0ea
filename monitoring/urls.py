from django.urls import path

from monitoring import api, views

api_urlpatterns = [
    path("metrics", views.metrics, name="metrics"),
    path("services/<str:name>/predictions", api.PredictionListApi.as_view(), name="api_service_predictions"),
    path("services/<str:name>/feedback", api.FeedbackApi.as_view(), name="api_service_feedback"),
    path("services/<str:name>/quality", api.QualityApi.as_view(), name="api_service_quality"),
    path("services/<str:name>/performance", api.OverviewApi.as_view(), name="api_service_performance"),
    path("services/<str:name>/drift", api.DriftApi.as_view(), name="api_service_drift"),
    path("services/<str:name>/drift-thresholds", api.DriftThresholdsApi.as_view(), name="api_drift_thresholds"),
    path("services/<str:name>/alert-rules", api.AlertRuleListApi.as_view(), name="api_alert_rules"),
    path("services/<str:name>/alerts", api.AlertEventListApi.as_view(), name="api_alert_events"),
    path("services/<str:name>/webhooks", api.WebhookListApi.as_view(), name="api_webhooks"),
    path("alert-rules/<int:rule_id>", api.AlertRuleDetailApi.as_view(), name="api_alert_rule_detail"),
    path("webhooks/<int:webhook_id>", api.WebhookDetailApi.as_view(), name="api_webhook_detail"),
    path("webhooks/<int:webhook_id>/deliveries", api.WebhookDeliveryListApi.as_view(), name="api_webhook_deliveries"),
    path("users/me/notifications", api.NotificationPreferencesApi.as_view(), name="api_notification_preferences"),
]

urlpatterns = [
    path("metrics", views.metrics, name="metrics"),
    path("services/<slug:name>/performance/", views.service_performance, name="service_performance"),
    path("services/<slug:name>/performance/logging", views.logging_change, name="prediction_logging_change"),
    path("services/<slug:name>/performance/feedback", views.feedback_upload, name="feedback_upload"),
    path("services/<slug:name>/performance/alert-rules", views.alert_rule_add, name="alert_rule_add"),
    path("services/<slug:name>/performance/webhooks", views.webhook_add, name="webhook_add"),
    path("services/<slug:name>/performance/drift", views.drift_thresholds_change, name="drift_thresholds_change"),
    path("alert-rules/<int:rule_id>", views.alert_rule_change, name="alert_rule_change"),
    path("webhooks/<int:webhook_id>/remove", views.webhook_remove, name="webhook_remove"),
    path("webhooks/<int:webhook_id>/events", views.webhook_events, name="webhook_events"),
    path("account/notifications", views.notification_preferences, name="notification_preferences"),
]
