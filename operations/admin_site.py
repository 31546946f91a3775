"""The operators' admin site: its index is a dashboard of the system's health.

A verdict first (``health_verdict``: healthy, degraded or down, with its reasons), then the
failures of the last hour, live threads, every queue, every worker and the indexing figures.
Every figure comes from ``system_status()``, ``readiness()`` and ``pool_status()`` (the same
readings as /metrics and /readyz) and links to the changelist that lists what it counts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.db import DatabaseError
from django.http import HttpRequest
from django.urls import URLPattern, URLResolver, reverse
from django.utils import timezone

from conversations.models import ThreadState
from conversations.services import THREADS_QUEUE
from core.admin_display import changelist_url, duration_text
from operations.charts import charts, charts_urls
from operations.health import Readiness, readiness
from operations.health_verdict import (
    DOCUMENTS,
    HEALTHY,
    JOBS,
    THREADS,
    HealthThresholds,
    Verdict,
    verdict,
)
from operations.pool_status import pool_status
from operations.system_status import (
    EMBEDDING_ERROR_WINDOW,
    QueueStatus,
    SystemStatus,
    WorkerStatus,
    statements_bounded,
    system_status,
)
from operations.turn_failures import TurnFailure, turn_failures
from operations.workers import ALL_QUEUES, TURNS

logger = logging.getLogger(__name__)

# The dashboard gives up on a slow database rather than holding the page (and a connection).
DASHBOARD_STATEMENT_TIMEOUT_MS = 2000


@dataclass(frozen=True)
class Figure:
    label: str
    value: int | str
    url: str
    # Anything but the normal value (a failed job, a runtime document with chunks).
    alarming: bool = False


@dataclass
class Dashboard:
    readiness: Readiness
    health: Verdict = field(default_factory=lambda: Verdict(HEALTHY))
    # The last hour's failed and stopped turns (the newest), how many in all, and their list.
    failures: list[dict[str, Any]] = field(default_factory=list)
    failures_total: int = 0
    failures_url: str = ""
    threads: list[Figure] = field(default_factory=list)
    queues: list[dict[str, Any]] = field(default_factory=list)
    workers: list[dict[str, Any]] = field(default_factory=list)
    documents: list[Figure] = field(default_factory=list)
    # Why the figures are missing (the database was too slow or failed).
    unavailable: str = ""


def _queue_url(queue: str, job_status: str, thread_state: str) -> str:
    """The list behind a queue's figure: its jobs in that status, or for the threads queue (the
    thread rows) its threads in the matching state."""
    if queue == THREADS_QUEUE:
        return changelist_url(THREADS, state__exact=thread_state)
    return changelist_url(JOBS, queue_name__exact=queue, status__exact=job_status)


def _figures(status: SystemStatus) -> tuple[list[Figure], list[dict[str, Any]], list[Figure]]:
    threads = [
        Figure(state, count, changelist_url(THREADS, state__exact=state))
        for state, count in status.threads_by_state.items()
    ]
    threads.append(
        Figure(
            "running with an expired lease",
            status.expired_leases,
            changelist_url(THREADS, lease="expired"),
            alarming=status.expired_leases > 0,
        )
    )
    by_name = {queue.queue: queue for queue in status.queues}
    # Every queue a worker serves, idle ones included, then any other queue that has jobs.
    every_queue = [
        by_name.get(name, QueueStatus(queue=name))
        for name in sorted(set(ALL_QUEUES) | set(by_name))
    ]
    queues = [
        {
            "name": queue.queue,
            "waiting": Figure(
                "waiting", queue.waiting, _queue_url(queue.queue, "todo", ThreadState.CREATED)
            ),
            "doing": Figure(
                "doing", queue.doing, _queue_url(queue.queue, "doing", ThreadState.RUNNING)
            ),
            "failed": Figure(
                "failed",
                queue.failed,
                _queue_url(queue.queue, "failed", ThreadState.FAILED),
                alarming=queue.failed > 0,
            ),
            "oldest_waiting": (
                duration_text(timedelta(seconds=queue.oldest_waiting_seconds))
                if queue.oldest_waiting_seconds is not None
                else "-"
            ),
        }
        for queue in every_queue
    ]
    since = (timezone.now() - EMBEDDING_ERROR_WINDOW).isoformat()
    documents = [
        Figure(
            "indexing backlog (pending)",
            status.indexing_backlog,
            changelist_url(DOCUMENTS, index_state__exact="pending"),
        ),
        Figure(
            "embedding errors in the last hour",
            status.embedding_errors_last_hour,
            changelist_url(DOCUMENTS, index_state__exact="failed", updated_at__gte=since),
            alarming=status.embedding_errors_last_hour > 0,
        ),
        Figure(
            "runtime documents with chunks (should be 0)",
            status.runtime_documents_with_chunks,
            changelist_url(DOCUMENTS, is_runtime__exact="1", chunks="yes"),
            alarming=status.runtime_documents_with_chunks > 0,
        ),
        Figure(
            "runtime documents with versions (should be 0)",
            status.runtime_documents_with_versions,
            changelist_url(DOCUMENTS, is_runtime__exact="1", versions="yes"),
            alarming=status.runtime_documents_with_versions > 0,
        ),
    ]
    return threads, queues, documents


def _worker_rows(workers: tuple[WorkerStatus, ...]) -> list[dict[str, Any]]:
    stalled = settings.WORKER_STALLED_SECONDS
    return [
        {
            "id": worker.worker_id,
            "kind": worker.kind or "-",
            "host": worker.host or "-",
            "pid": worker.pid if worker.pid is not None else "-",
            "registered_at": worker.registered_at,
            "heartbeat_age": duration_text(timedelta(seconds=worker.heartbeat_age_seconds)),
            "stale": worker.heartbeat_age_seconds > stalled,
            # Only turn workers lease threads: a background worker's turns would say nothing.
            "current_turns": worker.current_turns if worker.kind == TURNS.name else "-",
        }
        for worker in workers
    ]


def _failure_rows(failures: list[TurnFailure]) -> list[dict[str, Any]]:
    now = timezone.now()
    return [
        {
            "thread_id": str(failure.thread_id),
            "url": reverse("admin:conversations_thread_change", args=[failure.thread_id]),
            "tenant": failure.tenant,
            "state": failure.state,
            "timed_out": failure.timed_out,
            "finished_at": failure.finished_at,
            "finished_ago": (
                duration_text(now - failure.finished_at) if failure.finished_at else "-"
            ),
            "reason": failure.reason,
        }
        for failure in failures
    ]


def dashboard() -> Dashboard:
    """The dashboard's verdict and figures; a slow or failing database leaves the figures out
    and says why (a reason of the verdict)."""
    # Before the bounded status transaction: readiness() reports its own database errors, and
    # one met inside a transaction would abort it for the queries after.
    ready = readiness()
    board = Dashboard(readiness=ready)
    status: SystemStatus | None = None
    try:
        with statements_bounded(DASHBOARD_STATEMENT_TIMEOUT_MS):
            status = system_status()
            failures = turn_failures()
    except DatabaseError as error:
        logger.warning("admin dashboard: system status unavailable: %s", error)
        status = None
        board.unavailable = (
            "The figures are unavailable: the database did not answer within "
            f"{DASHBOARD_STATEMENT_TIMEOUT_MS} ms ({type(error).__name__})."
        )
    board.health = verdict(
        status,
        ready,
        pool_status(),
        HealthThresholds.from_settings(settings),
        unavailable=board.unavailable,
    )
    if status is None:
        return board
    board.threads, board.queues, board.documents = _figures(status)
    board.workers = _worker_rows(status.workers)
    board.failures = _failure_rows(failures)
    board.failures_total = status.recent_turns.failures_last_hour
    board.failures_url = changelist_url(
        THREADS, finished="1h", state__in=f"{ThreadState.FAILED},{ThreadState.STOPPED}"
    )
    return board


class OperatorsAdminSite(admin.AdminSite):
    site_header = "ironclaw_site operations"
    site_title = "ironclaw_site admin"
    index_title = "Dashboard"
    # The site has no public pages: Django's "View site" link led to a 404.
    site_url = None

    def index(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        return super().index(
            request,
            {
                "dashboard": dashboard(),
                "charts": charts(request.GET.get("span", "hour")),
                **(extra_context or {}),
            },
        )

    def get_urls(self) -> list[URLPattern | URLResolver]:
        # The charts also have a page of their own (/admin/charts/), before the models' URLs.
        return [*charts_urls(self), *super().get_urls()]
