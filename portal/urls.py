from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from accounts.urls import api_urlpatterns as accounts_api
from portal import views

admin.site.site_header = "Portal administration"
admin.site.site_title = "Portal admin"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("health", views.health, name="health"),
    path("api/v1/", include(accounts_api)),
    path("api/schema", SpectacularAPIView.as_view(), name="api_schema"),
    path("api/docs", SpectacularSwaggerView.as_view(url_name="api_schema"), name="api_docs"),
    path("api/redoc", SpectacularRedocView.as_view(url_name="api_schema"), name="api_redoc"),
    path("", include("accounts.urls")),
]

handler400 = "portal.views.error_400"
handler403 = "portal.views.error_403"
handler404 = "portal.views.error_404"
handler500 = "portal.views.error_500"
