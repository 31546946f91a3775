from __future__ import annotations

from django.apps import AppConfig


class IronclawSiteConfig(AppConfig):
    name = "ironclaw_site"
    verbose_name = "ironclaw_site"

    def ready(self) -> None:
        from django.core.signals import request_finished

        from ironclaw_site.metrics import pool_gauges_update

        # Connected after Django's own close_old_connections, so the request's connection is
        # back in the pool when the figures are read.
        request_finished.connect(pool_gauges_update, dispatch_uid="ironclaw_pool_gauges")
