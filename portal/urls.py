from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from accounts.urls import api_urlpatterns as accounts_api
from deployments.urls import api_urlpatterns as deployments_api
from portal import api, views

admin.site.site_header = "Portal administration"
admin.site.site_title = "Portal admin"

registry_api = [
    path("uploads", api.UploadListApi.as_view(), name="api_uploads"),
    path("uploads/<str:upload_id>", api.UploadDetailApi.as_view(), name="api_upload_detail"),
    path("uploads/<str:upload_id>/complete", api.UploadCompleteApi.as_view(), name="api_upload_complete"),
    path("models", api.ModelListApi.as_view(), name="api_models"),
    path("models/<str:name>", api.ModelDetailApi.as_view(), name="api_model_detail"),
    path("models/<str:name>/versions", api.VersionListApi.as_view(), name="api_model_versions"),
    path("models/<str:name>/versions/<str:version>", api.VersionDetailApi.as_view(), name="api_version_detail"),
    path(
        "models/<str:name>/versions/<str:version>/artifact",
        api.VersionArtifactApi.as_view(),
        name="api_version_artifact",
    ),
]

registry_pages = [
    path("models/", views.model_list, name="model_list"),
    path("models/new", views.model_create, name="model_create"),
    path("models/<slug:name>/", views.model_detail, name="model_detail"),
    path("models/<slug:name>/edit", views.model_edit, name="model_edit"),
    path("models/<slug:name>/versions/new", views.VersionRegisterView.as_view(), name="version_register"),
    path("models/<slug:name>/versions/<str:version>/", views.version_detail, name="version_detail"),
]

urlpatterns = [
    path("admin/", admin.site.urls),
    path("health", views.health, name="health"),
    path("api/v1/", include(accounts_api)),
    path("api/v1/", include(registry_api)),
    path("api/v1/", include(deployments_api)),
    path("api/schema", SpectacularAPIView.as_view(), name="api_schema"),
    path("api/docs", SpectacularSwaggerView.as_view(url_name="api_schema"), name="api_docs"),
    path("api/redoc", SpectacularRedocView.as_view(url_name="api_schema"), name="api_redoc"),
    path("", include(registry_pages)),
    path("", include("deployments.urls")),
    path("", include("accounts.urls")),
]

handler400 = "portal.views.error_400"
handler403 = "portal.views.error_403"
handler404 = "portal.views.error_404"
handler500 = "portal.views.error_500"
