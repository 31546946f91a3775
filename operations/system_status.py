"""One reading of the system's health: what the admin dashboard shows and ``/metrics`` exports.

Every figure is one indexed query, cheap on large tables: live threads only (terminal threads are
the bulk of the table and say nothing about health), threads that ended in the last hour (on
``thread_finished_idx``), jobs by queue and status, documents waiting for or failed at indexing,
the registered workers. Call it from a request or a scrape, never from a hot path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypedDict

from django.db import connection, transaction
from django.db.models import Count, Exists, Min, OuterRef
from django.utils import timezone

from conversations.models import LIVE_STATES, Thread, ThreadState
from conversations.services import THREADS_QUEUE
from conversations.services.turn_queue import TURN_WORKER_OWNER_PREFIX
from workspace.models import Chunk, Document, DocumentVersion, IndexState

EMBEDDING_ERROR_WINDOW = timedelta(hours=1)
# The health verdict's window for failed turns, and the dashboard's for its list of failures.
RECENT_TURNS_WINDOW = timedelta(minutes=15)
FAILURES_WINDOW = timedelta(hours=1)
# A turn that ran out of time fails with an error saying so: the reference runner's "the turn timed
# out after N s (ENGINE_TURN_TIMEOUT_S)", and external engines are asked to say the same.
TIMED_OUT_TEXT = "timed out"
# More workers than any deployment runs: the table stays one bounded read whatever happens.
WORKERS_SHOWN = 100


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
class RecentTurns:
    """Turns that ended badly lately, read from the threads that finished in the last hour."""

    # Failed in the last RECENT_TURNS_WINDOW, and of those the ones that ran out of time.
    failed: int = 0
    timed_out: int = 0
    # Some turn completed in the last RECENT_TURNS_WINDOW: turns are served, some fail.
    completed: bool = False
    # Failed or stopped in the last FAILURES_WINDOW (the dashboard's list of failures).
    failures_last_hour: int = 0


@dataclass(frozen=True)
class WorkerStatus:
    """A registered worker (a row of ``procrastinate_workers``) and what it is doing."""

    worker_id: int
    # Its kind (``run_worker --name``), "" for a worker that did not record one.
    kind: str
    host: str
    pid: int | None
    registered_at: datetime | None
    heartbeat_age_seconds: float
    # Running threads whose lease names this worker (a turn worker's turns; 0 for the others).
    current_turns: int


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
    # How long the oldest pending document has waited since its last write (None: none waits).
    indexing_backlog_oldest_seconds: float | None = None
    recent_turns: RecentTurns = field(default_factory=RecentTurns)
    workers: tuple[WorkerStatus, ...] = ()

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


def recent_turns() -> RecentTurns:
    """Failed, timed-out and stopped turns lately: one range of thread_finished_idx (the last
    hour's finished threads, however many finished before)."""
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FILTER (WHERE state = %(failed)s AND finished_at >= %(recent)s),"
            " count(*) FILTER (WHERE state = %(failed)s AND finished_at >= %(recent)s"
            "   AND outcome->>'error' ILIKE %(timed_out)s),"
            " count(*),"
            " EXISTS (SELECT 1 FROM conversations_thread"
            "   WHERE finished_at >= %(recent)s AND state = %(completed)s)"
            " FROM conversations_thread"
            " WHERE finished_at >= %(hour)s AND state IN (%(failed)s, %(stopped)s)",
            {
                "failed": ThreadState.FAILED,
                "stopped": ThreadState.STOPPED,
                "completed": ThreadState.COMPLETED,
                "recent": now - RECENT_TURNS_WINDOW,
                "hour": now - FAILURES_WINDOW,
                "timed_out": f"%{TIMED_OUT_TEXT}%",
            },
        )
        failed, timed_out, failures, completed = cursor.fetchone()
    return RecentTurns(
        failed=failed, timed_out=timed_out, completed=completed, failures_last_hour=failures
    )


def worker_statuses() -> tuple[WorkerStatus, ...]:
    """Every registered worker with its kind, host, pid, heartbeat age and turns in flight, in
    one statement (the turns counted over running threads, on thread_live_state_idx)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "WITH turns AS ("
            "  SELECT substring(lease_owner FROM '^turn-worker:([0-9]+):')::bigint AS worker_id,"
            "    count(*) AS n"
            "  FROM conversations_thread"
            "  WHERE state = %(running)s AND starts_with(lease_owner, %(prefix)s)"
            "  GROUP BY 1"
            ") "
            "SELECT worker.id, coalesce(name.name, ''), coalesce(name.host, ''), name.pid,"
            " name.registered_at, greatest(0, extract(epoch FROM now() - worker.last_heartbeat)),"
            " coalesce(turns.n, 0)"
            " FROM procrastinate_workers worker"
            " LEFT JOIN ironclaw_site_workername name ON name.worker_id = worker.id"
            " LEFT JOIN turns ON turns.worker_id = worker.id"
            " ORDER BY name.name NULLS LAST, worker.id LIMIT %(shown)s",
            {
                "running": ThreadState.RUNNING,
                "prefix": TURN_WORKER_OWNER_PREFIX,
                "shown": WORKERS_SHOWN,
            },
        )
        return tuple(
            WorkerStatus(
                worker_id=worker_id,
                kind=kind,
                host=host,
                pid=pid,
                registered_at=registered_at,
                heartbeat_age_seconds=float(age),
                current_turns=turns,
            )
            for worker_id, kind, host, pid, registered_at, age, turns in cursor.fetchall()
        )


class DocumentCounts(TypedDict):
    indexing_backlog: int
    indexing_backlog_oldest_seconds: float | None
    embedding_errors_last_hour: int
    runtime_documents_with_chunks: int
    runtime_documents_with_versions: int


def document_counts() -> DocumentCounts:
    runtime = Document.objects.filter(is_runtime=True)
    # Served by workspace_document_stale (documents not yet indexed only).
    backlog = Document.objects.filter(index_state=IndexState.PENDING).aggregate(
        n=Count("id"), oldest=Min("updated_at")
    )
    oldest = backlog["oldest"]
    return {
        "indexing_backlog": backlog["n"],
        "indexing_backlog_oldest_seconds": (
            max(0.0, (timezone.now() - oldest).total_seconds()) if oldest is not None else None
        ),
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


@contextmanager
def statements_bounded(statement_timeout_ms: int | None) -> Iterator[None]:
    """With a timeout, one transaction whose statements give up after that long (a locked table
    or a slow database raises DatabaseError, not a hang); without, nothing."""
    with transaction.atomic() if statement_timeout_ms else nullcontext():
        if statement_timeout_ms:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT set_config('statement_timeout', %s, true)",
                    [f"{statement_timeout_ms}ms"],
                )
        yield


def system_status(*, statement_timeout_ms: int | None = None) -> SystemStatus:
    """Read every figure; with ``statement_timeout_ms``, bounded (``statements_bounded``)."""
    with statements_bounded(statement_timeout_ms):
        threads_by_state, expired = thread_counts()
        return SystemStatus(
            threads_by_state=threads_by_state,
            expired_leases=expired,
            queues=queue_statuses(),
            recent_turns=recent_turns(),
            workers=worker_statuses(),
            **document_counts(),
        )
