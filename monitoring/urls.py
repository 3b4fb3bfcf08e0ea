from django.urls import path

from monitoring import api

api_urlpatterns = [
    path("services/<str:name>/predictions", api.PredictionListApi.as_view(), name="api_service_predictions"),
]
