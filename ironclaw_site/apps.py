from __future__ import annotations

from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class IronclawSiteConfig(AppConfig):
    name = "ironclaw_site"
    verbose_name = "ironclaw_site"


class OperatorsAdminConfig(admin_apps.AdminConfig):
    """Django's admin whose ``admin.site`` is the operators' site (a dashboard on its index)."""

    # Named in INSTALLED_APPS; IronclawSiteConfig stays this module's default.
    default = False
    default_site = "ironclaw_site.admin_site.OperatorsAdminSite"
