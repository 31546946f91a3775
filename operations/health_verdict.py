"""The dashboard's one-word answer to "is it healthy?": healthy, degraded or down, and why.

``down`` means the service is not serving turns: ``/readyz`` fails (the database is unavailable,
migrations are pending, a required worker kind is missing: a load balancer takes the web out), the
oldest runnable turn has waited past ``HEALTH_QUEUE_WAIT_RED_SECONDS``, or at least
``HEALTH_FAILED_TURNS_RED`` turns failed in the last 15 minutes and none completed. ``degraded``
means it serves turns but something needs a look: a turn waiting past the amber threshold, failed
turns, expired leases, a dead worker, a background backlog, embedding errors, database pool waits
or refusals, or figures the database was too slow to give. Each reason is a sentence with its
figure and a link to the list that shows it.

``verdict()`` is a pure function of its readings; the dashboard reads them (``system_status``,
``readiness``, ``pool_status``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.urls import reverse
from django.utils import timezone

from conversations.models import ThreadState
from conversations.services import THREADS_QUEUE
from core.admin_display import changelist_url, duration_text
from operations.health import Readiness
from operations.pool_status import PoolStatus
from operations.system_status import EMBEDDING_ERROR_WINDOW, SystemStatus, WorkerStatus

HEALTHY = "healthy"
DEGRADED = "degraded"
DOWN = "down"
_RANK = {HEALTHY: 0, DEGRADED: 1, DOWN: 2}

# The changelists the dashboard's figures and reasons link to.
THREADS = "admin:conversations_thread_changelist"
JOBS = "admin:procrastinate_procrastinatejob_changelist"
DOCUMENTS = "admin:workspace_document_changelist"
# The dashboard's own workers table.
WORKERS_TABLE = "#workers"


@dataclass(frozen=True)
class Reason:
    # Stable name of what is wrong (the banner's data-reason), e.g. "queue_wait".
    key: str
    level: str
    text: str
    # The list that shows it; "" when none does.
    url: str = ""


@dataclass(frozen=True)
class Verdict:
    level: str
    # Worst first.
    reasons: tuple[Reason, ...] = ()


@dataclass(frozen=True)
class HealthThresholds:
    """The HEALTH_* settings (and the worker settings the verdict shares with /readyz)."""

    queue_wait_amber_seconds: float = 30.0
    queue_wait_red_seconds: float = 120.0
    failed_turns_amber: int = 1
    failed_turns_red: int = 10
    backlog_amber_seconds: float = 300.0
    embedding_errors_amber: int = 1
    db_pool_waiting_amber: int = 5
    worker_stalled_seconds: float = 30.0
    # READYZ_WORKERS: a missing one of these is /readyz's reason, not said twice.
    required_worker_kinds: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Any) -> HealthThresholds:
        return cls(
            queue_wait_amber_seconds=settings.HEALTH_QUEUE_WAIT_AMBER_SECONDS,
            queue_wait_red_seconds=settings.HEALTH_QUEUE_WAIT_RED_SECONDS,
            failed_turns_amber=settings.HEALTH_FAILED_TURNS_AMBER,
            failed_turns_red=settings.HEALTH_FAILED_TURNS_RED,
            backlog_amber_seconds=settings.HEALTH_BACKLOG_AMBER_SECONDS,
            embedding_errors_amber=settings.HEALTH_EMBEDDING_ERRORS_AMBER,
            db_pool_waiting_amber=settings.HEALTH_DB_POOL_WAITING_AMBER,
            worker_stalled_seconds=settings.WORKER_STALLED_SECONDS,
            required_worker_kinds=tuple(settings.READYZ_WORKERS),
        )


def _duration(seconds: float) -> str:
    return duration_text(timedelta(seconds=seconds))


def _plural(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"


def _readiness_reasons(readiness: Readiness) -> list[Reason]:
    if readiness.ready:
        return []
    return [Reason(readiness.code, DOWN, f"/readyz: {readiness.message}", reverse("readyz"))]


def _queue_wait(status: SystemStatus, limits: HealthThresholds) -> list[Reason]:
    threads = next((queue for queue in status.queues if queue.queue == THREADS_QUEUE), None)
    waited = threads.oldest_waiting_seconds if threads else None
    if waited is None or waited <= limits.queue_wait_amber_seconds:
        return []
    down = waited > limits.queue_wait_red_seconds
    threshold = limits.queue_wait_red_seconds if down else limits.queue_wait_amber_seconds
    return [
        Reason(
            "queue_wait",
            DOWN if down else DEGRADED,
            f"The oldest runnable turn has waited {_duration(waited)} for a worker "
            f"({'down' if down else 'degraded'} past {_duration(threshold)}).",
            changelist_url(THREADS, state__exact=ThreadState.CREATED),
        )
    ]


def _failed_turns(status: SystemStatus, limits: HealthThresholds) -> list[Reason]:
    turns = status.recent_turns
    if turns.failed < limits.failed_turns_amber:
        return []
    down = turns.failed >= limits.failed_turns_red and not turns.completed
    timed_out = f", {turns.timed_out} of them timed out" if turns.timed_out else ""
    none_completed = " and none completed" if down else ""
    return [
        Reason(
            "failed_turns",
            DOWN if down else DEGRADED,
            f"{_plural(turns.failed, 'turn')} failed in the last 15 minutes{timed_out}"
            f"{none_completed}.",
            changelist_url(THREADS, finished="15m", state__exact=ThreadState.FAILED),
        )
    ]


def _expired_leases(status: SystemStatus) -> list[Reason]:
    if not status.expired_leases:
        return []
    return [
        Reason(
            "expired_leases",
            DEGRADED,
            f"{_plural(status.expired_leases, 'running thread holds', 'running threads hold')}"
            " an expired lease: its engine stopped renewing it, and the lease sweep has not "
            "requeued it yet.",
            changelist_url(THREADS, lease="expired"),
        )
    ]


def _workers(status: SystemStatus, limits: HealthThresholds) -> list[Reason]:
    stale: dict[str, list[WorkerStatus]] = {}
    live_kinds = set()
    for worker in status.workers:
        if worker.heartbeat_age_seconds > limits.worker_stalled_seconds:
            stale.setdefault(worker.kind, []).append(worker)
        else:
            live_kinds.add(worker.kind)
    reasons = []
    for kind, workers in sorted(stale.items()):
        if kind in live_kinds:
            reasons.append(
                Reason(
                    "workers_stale",
                    DEGRADED,
                    f"{_plural(len(workers), 'worker')} ({kind or 'unnamed'}) sent no heartbeat"
                    f" for over {_duration(limits.worker_stalled_seconds)} (dead, still "
                    "registered); the live ones carry on.",
                    WORKERS_TABLE,
                )
            )
        elif kind not in limits.required_worker_kinds:
            youngest = min(worker.heartbeat_age_seconds for worker in workers)
            reasons.append(
                Reason(
                    "workers_missing",
                    DEGRADED,
                    f"No live {kind or 'unnamed'} worker: the last heartbeat was "
                    f"{_duration(youngest)} ago; jobs on its queues wait until one starts.",
                    WORKERS_TABLE,
                )
            )
    return reasons


def _background(status: SystemStatus, limits: HealthThresholds) -> list[Reason]:
    amber = limits.backlog_amber_seconds
    reasons = []
    oldest = status.indexing_backlog_oldest_seconds
    if oldest is not None and oldest > amber:
        reasons.append(
            Reason(
                "indexing_backlog",
                DEGRADED,
                f"The oldest of {_plural(status.indexing_backlog, 'pending document')} has "
                f"waited {_duration(oldest)} for indexing (degraded past {_duration(amber)}).",
                changelist_url(DOCUMENTS, index_state__exact="pending"),
            )
        )
    for queue in status.queues:
        waited = queue.oldest_waiting_seconds
        if queue.queue != THREADS_QUEUE and waited is not None and waited > amber:
            reasons.append(
                Reason(
                    "job_wait",
                    DEGRADED,
                    f"The oldest job of the {queue.queue} queue has waited {_duration(waited)}"
                    f" (degraded past {_duration(amber)}).",
                    changelist_url(JOBS, queue_name__exact=queue.queue, status__exact="todo"),
                )
            )
    errors = status.embedding_errors_last_hour
    if errors >= limits.embedding_errors_amber:
        since = (timezone.now() - EMBEDDING_ERROR_WINDOW).isoformat()
        reasons.append(
            Reason(
                "embedding_errors",
                DEGRADED,
                f"{_plural(errors, 'document')} failed indexing (no embeddings) in the last hour.",
                changelist_url(DOCUMENTS, index_state__exact="failed", updated_at__gte=since),
            )
        )
    return reasons


def _pool(pool: PoolStatus, limits: HealthThresholds) -> list[Reason]:
    reasons = []
    if pool.waiting >= limits.db_pool_waiting_amber:
        reasons.append(
            Reason(
                "db_pool_waiting",
                DEGRADED,
                f"{_plural(pool.waiting, 'request is', 'requests are')} waiting for a pooled "
                "database connection (DATABASE_POOL_SIZE).",
            )
        )
    if pool.recent_timeouts:
        reasons.append(
            Reason(
                "db_pool_timeouts",
                DEGRADED,
                f"{_plural(pool.recent_timeouts, 'request')} got 503 for want of a pooled "
                f"database connection in the last {_duration(pool.timeouts_seconds)}.",
            )
        )
    return reasons


def verdict(
    status: SystemStatus | None,
    readiness: Readiness,
    pool: PoolStatus,
    thresholds: HealthThresholds,
    *,
    unavailable: str = "",
) -> Verdict:
    """The verdict and its reasons, worst first. ``status`` None: the figures could not be read
    (``unavailable`` says why), which is a reason of its own unless /readyz already says the
    database is away."""
    reasons = _readiness_reasons(readiness)
    if status is None:
        if readiness.checks.get("database") == "ok":
            reasons.append(Reason("status_unavailable", DEGRADED, unavailable))
    else:
        reasons += _queue_wait(status, thresholds)
        reasons += _failed_turns(status, thresholds)
        reasons += _expired_leases(status)
        reasons += _workers(status, thresholds)
        reasons += _background(status, thresholds)
    reasons += _pool(pool, thresholds)
    reasons.sort(key=lambda reason: -_RANK[reason.level])
    level = max((reason.level for reason in reasons), key=_RANK.__getitem__, default=HEALTHY)
    return Verdict(level, tuple(reasons))
