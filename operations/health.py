"""Liveness and readiness probes, outside the authenticated API.

``/readyz`` says what is missing while the service heals: the database, its migrations, and
each worker kind named in ``READYZ_WORKERS`` (``manage.py serve`` sets it to the workers it
runs). A worker kind is alive while one of its processes has a Procrastinate heartbeat younger
than ``WORKER_STALLED_SECONDS``. With ``READYZ_REQUIRE_WORKER`` on and no kinds named, one live
worker of any kind is required: jobs (turns, indexing, the maintenance that retries stalled jobs)
would otherwise wait unseen while the API accepts work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, JsonResponse

from core.api.exceptions import RETRY_AFTER_SECONDS, error_body
from core.error_views import get_only

logger = logging.getLogger(__name__)

# Once every migration is applied it stays applied for the life of this process (new migrations
# arrive with new code, hence a new process), so later probes only check the connection.
_migrations_applied = False

ALIVE = "alive"
MISSING = "missing"


def pending_migrations() -> list[str]:
    executor = MigrationExecutor(connection)
    targets = executor.loader.graph.leaf_nodes()
    return [
        f"{migration.app_label}.{migration.name}"
        for migration, _ in executor.migration_plan(targets)
    ]


def worker_kinds_alive() -> dict[str, str]:
    """Every worker kind required by READYZ_WORKERS or seen recently: alive or missing."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT name.name, "
            "bool_or(worker.last_heartbeat >= now() - make_interval(secs => %s)) "
            "FROM ironclaw_site_workername name "
            "JOIN procrastinate_workers worker ON worker.id = name.worker_id "
            "GROUP BY name.name",
            [settings.WORKER_STALLED_SECONDS],
        )
        seen = {name: ALIVE if alive else MISSING for name, alive in cursor.fetchall()}
    return {name: seen.get(name, MISSING) for name in settings.READYZ_WORKERS} | seen


def any_worker_alive() -> bool:
    """Some Procrastinate worker, named or not, has a heartbeat younger than
    WORKER_STALLED_SECONDS."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM procrastinate_workers "
            "WHERE last_heartbeat >= now() - make_interval(secs => %s))",
            [settings.WORKER_STALLED_SECONDS],
        )
        row = cursor.fetchone()
    return bool(row and row[0])


@dataclass(frozen=True)
class Readiness:
    """The /readyz verdict: ``code`` is "ready" or the error code of what is missing."""

    ready: bool
    code: str
    message: str
    checks: dict[str, Any]


def readiness() -> Readiness:
    """Database reachable, migrations applied, every worker kind of READYZ_WORKERS alive (or,
    with READYZ_REQUIRE_WORKER and no kinds named, some worker alive)."""
    global _migrations_applied
    checks: dict[str, Any] = {"database": MISSING, "migrations": "unknown", "workers": {}}
    require_any_worker = settings.READYZ_REQUIRE_WORKER and not settings.READYZ_WORKERS
    some_worker_alive = True
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
        if not _migrations_applied:
            pending = pending_migrations()
            if pending:
                checks["migrations"] = "pending"
                return Readiness(
                    False,
                    "migrations_pending",
                    f"{len(pending)} migrations are not applied; run `manage.py migrate`.",
                    {**checks, "pending": pending},
                )
            _migrations_applied = True
        checks["migrations"] = "ok"
        checks["workers"] = worker_kinds_alive()
        if require_any_worker:
            some_worker_alive = any_worker_alive()
    except DatabaseError as error:
        logger.warning("readiness check failed: %s", error)
        return Readiness(
            False, "database_unavailable", "The database is unavailable; retry shortly.", checks
        )
    missing = [name for name in settings.READYZ_WORKERS if checks["workers"].get(name) != ALIVE]
    if missing:
        return Readiness(
            False,
            "workers_missing",
            f"No live {' or '.join(missing)} worker; jobs on its queues wait until one starts.",
            checks,
        )
    if not some_worker_alive:
        return Readiness(
            False,
            "workers_missing",
            "No live worker (READYZ_REQUIRE_WORKER); jobs wait until one starts "
            "(`manage.py worker`).",
            checks,
        )
    return Readiness(True, "ready", "ready", checks)


@get_only
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@get_only
def readyz(request: HttpRequest) -> JsonResponse:
    verdict = readiness()
    if verdict.ready:
        return JsonResponse({"status": "ready", "checks": verdict.checks})
    response = JsonResponse(
        error_body(verdict.code, verdict.message, {"checks": verdict.checks}), status=503
    )
    response["Retry-After"] = RETRY_AFTER_SECONDS
    return response
