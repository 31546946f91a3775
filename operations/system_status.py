"""One reading of the system's health: what the admin dashboard shows and ``/metrics`` exports.

Every figure is one indexed query, cheap on large tables: live threads only (terminal threads are
the bulk of the table and say nothing about health), jobs by queue and status, documents waiting
for or failed at indexing. Call it from a request or a scrape, never from a hot path.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta

from django.db import connection, transaction
from django.db.models import Count, Exists, OuterRef
from django.utils import timezone

from conversations.models import LIVE_STATES, Thread, ThreadState
from conversations.services import THREADS_QUEUE
from workspace.models import Chunk, Document, DocumentVersion, IndexState

EMBEDDING_ERROR_WINDOW = timedelta(hours=1)


@dataclass(frozen=True)
class QueueStatus:
    """One queue: jobs by status and how long its oldest waiting job has waited. The threads
    queue's jobs are threads: waiting = created, doing = running (a turn's failure is its
    thread's outcome, not a failed job)."""

    queue: str
    waiting: int = 0
    doing: int = 0
    failed: int = 0
    oldest_waiting_seconds: float | None = None


@dataclass(frozen=True)
class SystemStatus:
    # Live states only, each present (0 when none).
    threads_by_state: dict[str, int]
    expired_leases: int
    queues: list[QueueStatus]
    # Documents whose index state is pending (written, not yet chunked and embedded).
    indexing_backlog: int
    # Documents whose last indexing left them without embeddings, in the last hour.
    embedding_errors_last_hour: int
    # Runtime documents must have neither; anything but 0 is a bug or a changed setting
    # (`manage.py cleanup_runtime_chunks` repairs it).
    runtime_documents_with_chunks: int
    runtime_documents_with_versions: int

    @property
    def live_threads(self) -> int:
        return sum(self.threads_by_state.values())


def thread_counts() -> tuple[dict[str, int], int]:
    """Live threads by state, and running threads whose lease has expired."""
    counts = dict(
        Thread.objects.filter(state__in=LIVE_STATES)
        .values_list("state")
        .annotate(n=Count("id"))
        .values_list("state", "n")
    )
    expired = Thread.objects.filter(
        state=ThreadState.RUNNING, lease_expires_at__lt=timezone.now()
    ).count()
    return {str(state): counts.get(state, 0) for state in LIVE_STATES}, expired


def queue_statuses() -> list[QueueStatus]:
    """Jobs waiting (todo), doing and failed per queue, the threads queue included; finished
    jobs are not counted."""
    return sorted([threads_queue_status(), *job_queue_statuses()], key=lambda q: q.queue)


def threads_queue_status() -> QueueStatus:
    """The threads queue, read from the thread rows (served by thread_live_state_idx)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FILTER (WHERE state = %(created)s AND NOT cancel_requested),"
            " count(*) FILTER (WHERE state = %(running)s),"
            " extract(epoch FROM now() - min(coalesce(enqueued_at, created_at))"
            "   FILTER (WHERE state = %(created)s AND NOT cancel_requested))"
            " FROM conversations_thread WHERE state IN (%(created)s, %(running)s)",
            {"created": ThreadState.CREATED, "running": ThreadState.RUNNING},
        )
        waiting, doing, oldest = cursor.fetchone()
    return QueueStatus(
        queue=THREADS_QUEUE,
        waiting=waiting,
        doing=doing,
        oldest_waiting_seconds=max(0.0, float(oldest)) if oldest is not None else None,
    )


def job_queue_statuses() -> list[QueueStatus]:
    """Procrastinate's queues."""
    with connection.cursor() as cursor:
        # Job ids grow with time, so a queue's oldest unscheduled waiting job is its smallest id,
        # and its deferral time is that job's first event (the jobs table has no timestamp).
        cursor.execute(
            "WITH per_queue AS ("
            "  SELECT queue_name,"
            "    count(*) FILTER (WHERE status = 'todo') AS waiting,"
            "    count(*) FILTER (WHERE status = 'doing') AS doing,"
            "    count(*) FILTER (WHERE status = 'failed') AS failed,"
            "    min(id) FILTER (WHERE status = 'todo' AND scheduled_at IS NULL) AS oldest_id,"
            "    min(scheduled_at) FILTER (WHERE status = 'todo' AND scheduled_at <= now())"
            "      AS oldest_scheduled"
            "  FROM procrastinate_jobs WHERE status IN ('todo', 'doing', 'failed')"
            "    AND queue_name <> %s"
            "  GROUP BY queue_name"
            ") "
            "SELECT queue_name, waiting, doing, failed, extract(epoch FROM now() - least("
            "  oldest_scheduled,"
            "  (SELECT min(at) FROM procrastinate_events WHERE job_id = per_queue.oldest_id)"
            ")) FROM per_queue ORDER BY queue_name",
            [THREADS_QUEUE],
        )
        return [
            QueueStatus(
                queue=queue,
                waiting=waiting,
                doing=doing,
                failed=failed,
                oldest_waiting_seconds=float(oldest) if oldest is not None else None,
            )
            for queue, waiting, doing, failed, oldest in cursor.fetchall()
        ]


def document_counts() -> dict[str, int]:
    runtime = Document.objects.filter(is_runtime=True)
    return {
        "indexing_backlog": Document.objects.filter(index_state=IndexState.PENDING).count(),
        "embedding_errors_last_hour": Document.objects.filter(
            index_state=IndexState.FAILED,
            updated_at__gte=timezone.now() - EMBEDDING_ERROR_WINDOW,
        ).count(),
        "runtime_documents_with_chunks": runtime.filter(
            Exists(Chunk.objects.filter(document=OuterRef("pk")))
        ).count(),
        "runtime_documents_with_versions": runtime.filter(
            Exists(DocumentVersion.objects.filter(document=OuterRef("pk")))
        ).count(),
    }


def system_status(*, statement_timeout_ms: int | None = None) -> SystemStatus:
    """Read every figure; with ``statement_timeout_ms``, in one transaction whose statements give
    up after that long (a locked table or a slow database raises DatabaseError, not a hang)."""
    with transaction.atomic() if statement_timeout_ms else nullcontext():
        if statement_timeout_ms:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT set_config('statement_timeout', %s, true)",
                    [f"{statement_timeout_ms}ms"],
                )
        threads_by_state, expired = thread_counts()
        return SystemStatus(
            threads_by_state=threads_by_state,
            expired_leases=expired,
            queues=queue_statuses(),
            **document_counts(),
        )
