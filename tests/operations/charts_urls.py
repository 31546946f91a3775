"""The site's URLs with the charts page at /admin/charts/, as the operators' site routes it."""

from __future__ import annotations

from django.contrib import admin
from django.urls import path

from ironclaw_site.urls import urlpatterns as site_urlpatterns
from operations.charts import charts_view

urlpatterns = [
    path("admin/charts/", admin.site.admin_view(charts_view), name="admin-charts"),
    *site_urlpatterns,
]
