from __future__ import annotations

from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from core.api.views import ApiNotFoundView
from operations import health, metrics_endpoint

api_v1 = [
    path("", include("accounts.api.urls")),
    path("", include("conversations.api.urls")),
    path("", include("engine.api.urls")),
    path("workspace/", include("workspace.api.urls")),
    path("", include("routines.api.urls")),
    path("", include("webhooks.api.urls")),
]

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics_endpoint.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/v1/", include(api_v1)),
    re_path(r"^api/", ApiNotFoundView.as_view(), name="api-not-found"),
]

handler400 = "core.error_views.bad_request"
handler403 = "core.error_views.permission_denied"
handler404 = "core.error_views.page_not_found"
handler500 = "core.error_views.server_error"
