from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerSplitView

from accounts import views as account_views
from accounts.urls import api_urlpatterns as accounts_api
from deployments.urls import api_urlpatterns as deployments_api
from monitoring.urls import api_urlpatterns as monitoring_api
from portal import views
from registry.urls import api_urlpatterns as registry_api

admin.site.site_header = "Portal administration"
admin.site.site_title = "Portal admin"

urlpatterns = [
    path("admin/login/", account_views.admin_login, name="admin_login"),  # throttled like every sign-in
    path("admin/", admin.site.urls),
    path("health", views.health, name="health"),
    path("", views.dashboard, name="dashboard"),
    path("api/v1/", include(accounts_api)),
    path("api/v1/", include(registry_api)),
    path("api/v1/", include(deployments_api)),
    path("api/v1/", include(monitoring_api)),
    path("api/schema", SpectacularAPIView.as_view(), name="api_schema"),
    # The split view serves Swagger UI's set-up script as a file: no inline script (CSP).
    path("api/docs", SpectacularSwaggerSplitView.as_view(url_name="api_schema"), name="api_docs"),
    path("api/redoc", SpectacularRedocView.as_view(url_name="api_schema"), name="api_redoc"),
    path("", include("registry.urls")),
    path("", include("deployments.urls")),
    path("", include("monitoring.urls")),
    path("", include("accounts.urls")),
]

handler400 = "portal.views.error_400"
handler403 = "portal.views.error_403"
handler404 = "portal.views.error_404"
handler500 = "portal.views.error_500"
