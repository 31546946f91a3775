"""Liveness and readiness probes, outside the authenticated API."""

from __future__ import annotations

import logging

from django.db import DatabaseError, connection
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from ironclaw_site.api.exceptions import error_body

logger = logging.getLogger(__name__)

# Once every migration is applied it stays applied for the life of this process (new migrations
# arrive with new code, hence a new process), so later probes only check the connection.
_migrations_applied = False


def pending_migrations() -> list[str]:
    executor = MigrationExecutor(connection)
    targets = executor.loader.graph.leaf_nodes()
    return [
        f"{migration.app_label}.{migration.name}"
        for migration, _ in executor.migration_plan(targets)
    ]


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    global _migrations_applied
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        if not _migrations_applied:
            pending = pending_migrations()
            if pending:
                return JsonResponse(
                    error_body(
                        "migrations_pending",
                        f"{len(pending)} migrations are not applied; run `manage.py migrate`.",
                        {"pending": pending},
                    ),
                    status=503,
                )
            _migrations_applied = True
    except DatabaseError as error:
        logger.warning("readiness check failed: %s", error)
        return JsonResponse(
            error_body("database_unavailable", "The database is unavailable; retry shortly."),
            status=503,
        )
    return JsonResponse({"status": "ready"})
