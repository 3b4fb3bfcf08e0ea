from django.urls import path

from registry import views
from registry.api import models, uploads, versions

api_urlpatterns = [
    path("uploads", uploads.UploadListApi.as_view(), name="api_uploads"),
    path("uploads/<str:upload_id>", uploads.UploadDetailApi.as_view(), name="api_upload_detail"),
    path("uploads/<str:upload_id>/complete", uploads.UploadCompleteApi.as_view(), name="api_upload_complete"),
    path("models", models.ModelListApi.as_view(), name="api_models"),
    path("models/<str:name>", models.ModelDetailApi.as_view(), name="api_model_detail"),
    path("models/<str:name>/versions", versions.VersionListApi.as_view(), name="api_model_versions"),
    path("models/<str:name>/versions/<str:version>", versions.VersionDetailApi.as_view(), name="api_version_detail"),
    path(
        "models/<str:name>/versions/<str:version>/reference",
        versions.VersionReferenceApi.as_view(),
        name="api_version_reference",
    ),
    path(
        "models/<str:name>/versions/<str:version>/artifact",
        versions.VersionArtifactApi.as_view(),
        name="api_version_artifact",
    ),
]

urlpatterns = [
    path("models/", views.model_list, name="model_list"),
    path("models/new", views.model_create, name="model_create"),
    path("models/<slug:name>/", views.model_detail, name="model_detail"),
    path("models/<slug:name>/edit", views.model_edit, name="model_edit"),
    path("models/<slug:name>/versions/new", views.VersionRegisterView.as_view(), name="version_register"),
    path("models/<slug:name>/versions/<str:version>/", views.version_detail, name="version_detail"),
    path("models/<slug:name>/versions/<str:version>/reference", views.version_reference, name="version_reference"),
]
