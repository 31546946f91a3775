"""``GET /metrics``: every process's metrics plus the database's state, for Prometheus.

Figures that are the database's state (threads by state, jobs by queue, indexing backlog) are not
recorded by anybody: ``SystemStatusCollector`` reads them at scrape time with the few indexed
queries of ``system_status()``, so they cost API requests nothing.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from core.api.exceptions import error_body
from core.error_views import get_only
from operations.system_status import SystemStatus, system_status
from operations.workers import ALL_QUEUES

logger = logging.getLogger(__name__)


# A scrape answers within this long whatever the database does (Prometheus gives a scrape 10 s by
# default; a late answer would lose every process's metrics just when they matter).
STATUS_DEADLINE_S = 2.0
# And the status queries themselves give up after this long (a locked table, a slow server).
STATUS_STATEMENT_TIMEOUT_MS = 1500

# One reader thread, one read in flight: a hung database holds that thread, not one per scrape.
_status_reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics-status")
_status_lock = threading.Lock()
_status_in_flight: Future[SystemStatus] | None = None


def _status_read() -> SystemStatus:
    try:
        return system_status(statement_timeout_ms=STATUS_STATEMENT_TIMEOUT_MS)
    finally:
        # The reader thread's own connection goes back to the pool after every read.
        connection.close()


def status_within_deadline() -> SystemStatus | None:
    """The database's state, or None when it did not answer within STATUS_DEADLINE_S."""
    global _status_in_flight
    with _status_lock:
        if _status_in_flight is None or _status_in_flight.done():
            _status_in_flight = _status_reader.submit(_status_read)
        in_flight = _status_in_flight
    try:
        return in_flight.result(timeout=STATUS_DEADLINE_S)
    except (FutureTimeout, DatabaseError) as error:
        logger.warning("metrics: database state unavailable (%s)", type(error).__name__)
        return None


class SystemStatusCollector:
    """The database's state at scrape time, from ``system_status()``."""

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "ironclaw_system_status_up",
            f"1 when the database answered this scrape's queries within {STATUS_DEADLINE_S:g} s.",
        )
        status = status_within_deadline()
        if status is None:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up

        threads = GaugeMetricFamily("ironclaw_threads", "Live threads by state.", labels=["state"])
        for state, count in status.threads_by_state.items():
            threads.add_metric([state], count)
        yield threads
        yield GaugeMetricFamily(
            "ironclaw_thread_leases_expired",
            "Running threads whose lease has expired (the sweeper requeues them).",
            value=status.expired_leases,
        )

        jobs = GaugeMetricFamily(
            "ironclaw_jobs",
            "Jobs by queue and status (waiting, doing, failed).",
            labels=["queue", "status"],
        )
        oldest = GaugeMetricFamily(
            "ironclaw_jobs_oldest_waiting_seconds",
            "Age of each queue's oldest waiting job (0 when none waits).",
            labels=["queue"],
        )
        by_queue = {queue.queue: queue for queue in status.queues}
        # Every queue a worker serves has its series, 0 included, so an alert sees it from the
        # start rather than only once a job waits.
        for name in sorted(set(ALL_QUEUES) | set(by_queue)):
            queue = by_queue.get(name)
            jobs.add_metric([name, "waiting"], queue.waiting if queue else 0)
            jobs.add_metric([name, "doing"], queue.doing if queue else 0)
            jobs.add_metric([name, "failed"], queue.failed if queue else 0)
            oldest.add_metric([name], (queue.oldest_waiting_seconds or 0.0) if queue else 0.0)
        yield jobs
        yield oldest
        yield GaugeMetricFamily(
            "ironclaw_indexing_backlog_documents",
            "Documents written but not yet chunked and embedded.",
            value=status.indexing_backlog,
        )
        yield GaugeMetricFamily(
            "ironclaw_indexing_backlog_oldest_seconds",
            "Age of the oldest document waiting for indexing (0 when none waits).",
            value=status.indexing_backlog_oldest_seconds or 0.0,
        )
        # The admin's health verdict reads these too: exported, an alert can use the same.
        recent = GaugeMetricFamily(
            "ironclaw_turns_failed_recently",
            "Turns that failed in the last 15 minutes (timed_out: those that ran out of time).",
            labels=["kind"],
        )
        recent.add_metric(["all"], status.recent_turns.failed)
        recent.add_metric(["timed_out"], status.recent_turns.timed_out)
        yield recent
        workers = GaugeMetricFamily(
            "ironclaw_workers",
            "Registered workers by kind, live or stale (silent for WORKER_STALLED_SECONDS).",
            labels=["kind", "state"],
        )
        counted: Counter[tuple[str, str]] = Counter(
            (
                worker.kind,
                "stale"
                if worker.heartbeat_age_seconds > settings.WORKER_STALLED_SECONDS
                else "live",
            )
            for worker in status.workers
        )
        for (kind, state), count in sorted(counted.items()):
            workers.add_metric([kind, state], count)
        yield workers
        yield GaugeMetricFamily(
            "ironclaw_embedding_errors_last_hour",
            "Documents whose indexing ended without embeddings in the last hour.",
            value=status.embedding_errors_last_hour,
        )
        runtime = GaugeMetricFamily(
            "ironclaw_runtime_documents_indexed",
            "Runtime documents with chunks or versions (must be 0).",
            labels=["has"],
        )
        runtime.add_metric(["chunks"], status.runtime_documents_with_chunks)
        runtime.add_metric(["versions"], status.runtime_documents_with_versions)
        yield runtime


class _ProcessRegistry:
    """This process's own metrics, when there is no multiprocess folder (one process)."""

    def collect(self) -> Iterator[Metric]:
        return iter(REGISTRY.collect())


def metrics_exposition() -> tuple[bytes, str]:
    """The text a scrape gets: every process's metrics and the database's state."""
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        registry.register(_ProcessRegistry())
    registry.register(SystemStatusCollector())
    return generate_latest(registry), CONTENT_TYPE_LATEST


_LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})
# A reverse proxy on the same host connects from loopback for every client; these headers say the
# request came through one, so it needs the token like any other remote client.
_FORWARDING_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")


def _is_local_scraper(request: HttpRequest) -> bool:
    return request.META.get("REMOTE_ADDR") in _LOOPBACK and not any(
        header in request.META for header in _FORWARDING_HEADERS
    )


def _refusal(request: HttpRequest) -> JsonResponse | None:
    """None when the client may scrape: a loopback client, or one with ``METRICS_TOKEN``."""
    if _is_local_scraper(request):
        return None
    token: str | None = settings.METRICS_TOKEN
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if token is None or scheme.lower() != "bearer" or not presented:
        return JsonResponse(
            error_body(
                "metrics_forbidden",
                "Metrics are served to loopback clients, or to others with "
                "'Authorization: Bearer <METRICS_TOKEN>' when METRICS_TOKEN is set.",
            ),
            status=403,
        )
    # Constant time: the comparison must not tell a prober how much of its guess was right.
    if not hmac.compare_digest(presented.strip().encode(), token.encode()):
        refused = JsonResponse(
            error_body("invalid_token", "The metrics token is not valid."), status=401
        )
        refused["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return refused
    return None


@get_only
def metrics(request: HttpRequest) -> HttpResponse:
    refused = _refusal(request)
    if refused is not None:
        return refused
    body, content_type = metrics_exposition()
    return HttpResponse(body, content_type=content_type)
