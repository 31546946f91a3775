from __future__ import annotations

from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class OperationsConfig(AppConfig):
    """The process model and the operators' views. It may import every app; no app imports it."""

    name = "operations"
    # The label the app had when it lived in the project package: its tables
    # (ironclaw_site_workername), migrations and content types keep their names.
    label = "ironclaw_site"
    verbose_name = "ironclaw_site"

    def ready(self) -> None:
        from django.core.signals import request_finished

        from core.metrics import pool_gauges_update
        from operations import checks  # noqa: F401  (registers the system checks)

        # Connected after Django's own close_old_connections, so the request's connection is
        # back in the pool when the figures are read.
        request_finished.connect(pool_gauges_update, dispatch_uid="ironclaw_pool_gauges")


class OperatorsAdminConfig(admin_apps.AdminConfig):
    """Django's admin whose ``admin.site`` is the operators' site (a dashboard on its index)."""

    # Named in INSTALLED_APPS; OperationsConfig stays this module's default.
    default = False
    default_site = "operations.admin_site.OperatorsAdminSite"
