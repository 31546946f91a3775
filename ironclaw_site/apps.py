from __future__ import annotations

from django.apps import AppConfig


class IronclawSiteConfig(AppConfig):
    name = "ironclaw_site"
    verbose_name = "ironclaw_site"
