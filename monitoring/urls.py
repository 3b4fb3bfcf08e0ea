from django.urls import path

from monitoring import api, views

api_urlpatterns = [
    path("metrics", views.metrics, name="metrics"),
    path("services/<str:name>/predictions", api.PredictionListApi.as_view(), name="api_service_predictions"),
    path("services/<str:name>/feedback", api.FeedbackApi.as_view(), name="api_service_feedback"),
    path("services/<str:name>/quality", api.QualityApi.as_view(), name="api_service_quality"),
]

urlpatterns = [
    path("metrics", views.metrics, name="metrics"),
    path("services/<slug:name>/performance/", views.service_performance, name="service_performance"),
    path("services/<slug:name>/performance/logging", views.logging_change, name="prediction_logging_change"),
    path("services/<slug:name>/performance/feedback", views.feedback_upload, name="feedback_upload"),
]
