"""Prometheus metrics of the plumbing every process records: requests, database pools and event
streams.

Every web and worker process records into ``PROMETHEUS_MULTIPROC_DIR`` (``manage.py serve`` gives
its children one, ``METRICS_DIR``), and a scrape of any web process sums them all
(the operations app's ``/metrics``). Recording is in memory or a memory-mapped file: never a
database statement. The apps keep their own series next to the code they describe
(``conversations.metrics``, ``workspace.metrics``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import psycopg_pool
from prometheus_client import Counter, Gauge, Histogram

# Any token is a valid HTTP method: labelled as sent, a client could mint a series per request.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str | None) -> str:
    return method if method in KNOWN_METHODS else "other"


REQUEST_DURATION = Histogram(
    "ironclaw_http_request_duration_seconds",
    "HTTP requests by route (the URL pattern, never the raw path), method and status.",
    ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
# "livesum": the sum over the processes alive now; a dead process's files are removed by serve.
DB_POOL_IN_USE = Gauge(
    "ironclaw_db_pool_connections_in_use",
    "Pooled database connections lent out, summed over processes.",
    multiprocess_mode="livesum",
)
DB_POOL_OPEN = Gauge(
    "ironclaw_db_pool_connections_open",
    "Database connections the pools hold open (in use or idle), summed over processes.",
    multiprocess_mode="livesum",
)
DB_POOL_WAITING = Gauge(
    "ironclaw_db_pool_requests_waiting",
    "Callers waiting for a pooled connection, summed over processes.",
    multiprocess_mode="livesum",
)
DB_POOL_TIMEOUTS = Counter(
    "ironclaw_db_pool_timeouts",
    "Requests answered 503 because no pooled connection came within DATABASE_POOL_TIMEOUT.",
)
# The event streams' hubs (core.streams).
STREAMS_OPEN = Gauge(
    "ironclaw_streams_open",
    "Event streams the web processes' hubs serve, summed over processes.",
    multiprocess_mode="livesum",
)
STREAMS_CLOSED = Counter(
    "ironclaw_streams_closed",
    "Event streams closed, by reason: client, lifetime, slow, done, error, shutdown.",
    ["reason"],
)
STREAM_FRAMES_SENT = Counter(
    "ironclaw_stream_frames_sent",
    "Frames the event streams sent after their first bytes (keep-alive comments not counted).",
)


def pool_gauges_update(*args: Any, **kwargs: Any) -> None:
    """Record this process's pool figures (in memory, no statement). Connected to
    ``request_finished`` after Django returns the request's connection, and run after each job."""
    # Imported here: settings import this module (the worker middleware below).
    from django.db import connections

    pool = type(connections["default"])._connection_pools.get("default")  # type: ignore[attr-defined]
    # Not created yet: reading connection.pool would create it.
    if pool is None:
        return
    stats = pool.get_stats()
    size = stats.get("pool_size", 0)
    DB_POOL_OPEN.set(size)
    DB_POOL_IN_USE.set(size - stats.get("pool_available", 0))
    DB_POOL_WAITING.set(stats.get("requests_waiting", 0))


async def pool_gauges_update_after_job(
    call_next: Callable[[], Awaitable[Any]], context: Any, worker: Any
) -> Any:
    """Procrastinate worker middleware: the pool figures once the job gave its connection back
    (Django's cleanup is a task middleware, inside this one)."""
    try:
        return await call_next()
    finally:
        pool_gauges_update()


def database_unavailable_record(error: BaseException) -> None:
    """Count a 503 whose cause was an exhausted pool."""
    while error is not None:
        if isinstance(error, psycopg_pool.PoolTimeout):
            DB_POOL_TIMEOUTS.inc()
            return
        error = error.__cause__  # type: ignore[assignment]
