"""The data of the dashboard's charts: turns, turn overhead, queue wait and the indexing backlog
over the last hour or day, read from the database's own rows (no time-series store).

Each chart is one SQL query that buckets its rows with ``date_bin`` over a ``generate_series`` of
bucket starts (an empty bucket is 0, or a gap for a percentile) and reads only the rows of the
span through an index: threads by ``thread_finished_idx`` (and, for claims not finished yet, the
live threads by ``thread_live_state_idx``), job events by ``ironclaw_events_at_idx``. Its cost
follows the span's rows, never the table's. ``operations/charts.py`` puts them on the dashboard.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from conversations.models import LIVE_STATES, TERMINAL_STATES, ThreadState

INDEXING_QUEUE = "indexing"


@dataclass(frozen=True)
class Span:
    name: str
    label: str
    step: timedelta
    # The bucket's length in words ("per 5 minutes").
    step_label: str
    buckets: int
    # An x-axis label every this many buckets.
    label_every: int

    @property
    def parameters(self) -> dict[str, str | int]:
        """The span's parameters of the charts' SQL."""
        return {"step": f"{self.step.total_seconds():.0f} seconds", "buckets": self.buckets}


SPANS = {
    "hour": Span("hour", "last hour", timedelta(minutes=5), "5 minutes", 12, 3),
    "day": Span("day", "last day", timedelta(hours=1), "hour", 24, 6),
}


def span_named(name: str) -> Span:
    """The span a query parameter names; anything else is the last hour."""
    return SPANS.get(name, SPANS["hour"])


@dataclass(frozen=True)
class Series:
    name: str
    label: str
    # One per bucket; None where a bucket has nothing to measure (drawn as a gap).
    values: tuple[float | None, ...]
    # A second line of a chart is dashed: told apart without its colour.
    dashed: bool = False

    @property
    def colour(self) -> str:
        return f"var(--chart-{self.name}, {LIGHT_COLOURS[self.name]})"


# Each series' colour is a custom property that charts.html sets for the light and the dark
# theme (to the admin's own variables where one fits); its light value is the fallback.
LIGHT_COLOURS = {
    "completed": "#2e7d32",
    "failed": "#ba2121",
    "stopped": "#a15c00",
    "other": "#666",
    "p50": "#417893",
    "p95": "#8e24aa",
    "peak": "#a15c00",
    "waiting": "#417893",
}


@dataclass(frozen=True)
class ChartData:
    key: str
    title: str
    # "turns", "ms" or "documents".
    unit: str
    # Stacked bars (counts that add up) or one line per series.
    stacked: bool
    starts: tuple[datetime, ...]
    step: timedelta
    series: tuple[Series, ...]
    note: str
    # Per bucket, how many of what the values summarise ("turns", "claims"); empty for counts.
    counts: tuple[int, ...] = ()
    counted: str = ""


# Buckets aligned on UTC (date_bin's origin), the last one holding now (still filling).
_ORIGIN = "TIMESTAMPTZ '2000-01-01 00:00:00+00'"
_STEP = "%(step)s::interval"
_LAST = f"date_bin({_STEP}, now(), {_ORIGIN})"
_FIRST = f"({_LAST} - {_STEP} * (%(buckets)s - 1))"
_BUCKETS = f"buckets AS (SELECT generate_series({_FIRST}, {_LAST}, {_STEP}) AS start)"


def _bucket_of(column: str) -> str:
    # A timestamp written by a process whose clock runs ahead of the database's falls in the
    # last bucket rather than in none.
    return f"least(date_bin({_STEP}, {column}, {_ORIGIN}), {_LAST})"


_TERMINAL = ", ".join(f"'{state}'" for state in TERMINAL_STATES)
_LIVE = ", ".join(f"'{state}'" for state in LIVE_STATES)

# Threads that finished in each bucket, by state (a finished thread is completed, failed or
# stopped; "other" would be a row finished outside the services).
TURNS_SQL = f"""
WITH {_BUCKETS}, finished AS (
    SELECT {_bucket_of("finished_at")} AS start, state FROM conversations_thread
    WHERE finished_at >= {_FIRST}
)
SELECT b.start,
    count(f.state) FILTER (WHERE f.state = '{ThreadState.COMPLETED}'),
    count(f.state) FILTER (WHERE f.state = '{ThreadState.FAILED}'),
    count(f.state) FILTER (WHERE f.state = '{ThreadState.STOPPED}'),
    count(f.state) FILTER (WHERE f.state NOT IN ({_TERMINAL}))
FROM buckets b LEFT JOIN finished f ON f.start = b.start
GROUP BY b.start ORDER BY b.start
"""

# The admin thread page's and the turn_overhead metric's definition: end to end (from enqueued,
# else created) minus model time, never below 0; threads that finished in each bucket after at
# least one claim (one stopped before any run has no overhead to speak of).
OVERHEAD_SQL = f"""
WITH {_BUCKETS}, finished AS (
    SELECT {_bucket_of("finished_at")} AS start,
        greatest(0, date_part('epoch', finished_at - coalesce(enqueued_at, created_at)) * 1000
            - model_time_ms) AS overhead_ms
    FROM conversations_thread
    WHERE finished_at >= {_FIRST} AND started_at IS NOT NULL
)
SELECT b.start,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY f.overhead_ms),
    percentile_cont(0.95) WITHIN GROUP (ORDER BY f.overhead_ms),
    count(f.overhead_ms)
FROM buckets b LEFT JOIN finished f ON f.start = b.start
GROUP BY b.start ORDER BY b.start
"""

# Claims in each bucket, from runnable (enqueued_at: spawn or requeue) to claimed (claimed_at:
# the latest claim; started_at is the first). A claim in the span belongs to a thread finished
# since (thread_finished_idx) or still live (thread_live_state_idx): finished threads before the
# span are never read. Left out: a claim after a requeue that came later (its enqueued_at is
# newer than its claim), and a paused thread claimed again for a message (claimed after its first
# claim with no requeue between: it waited for the message, not for a worker).
QUEUE_WAIT_SQL = f"""
WITH {_BUCKETS}, claims AS (
    SELECT claimed_at, started_at, coalesce(enqueued_at, created_at) AS since
    FROM conversations_thread WHERE finished_at >= {_FIRST} AND claimed_at >= {_FIRST}
    UNION ALL
    SELECT claimed_at, started_at, coalesce(enqueued_at, created_at) AS since
    FROM conversations_thread WHERE state IN ({_LIVE}) AND claimed_at >= {_FIRST}
), waits AS (
    SELECT {_bucket_of("claimed_at")} AS start,
        date_part('epoch', claimed_at - since) * 1000 AS wait_ms
    FROM claims
    WHERE claimed_at >= since AND NOT (claimed_at > started_at AND started_at >= since)
)
SELECT b.start,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY w.wait_ms),
    percentile_cont(0.95) WITHIN GROUP (ORDER BY w.wait_ms),
    count(w.wait_ms)
FROM buckets b LEFT JOIN waits w ON w.start = b.start
GROUP BY b.start ORDER BY b.start
"""

# Jobs of the indexing queue waiting for a worker (status todo), in the past: the number waiting
# now, minus the jobs that started waiting since (deferred, deferred again for a retry, retried by
# hand), plus the ones that stopped waiting since (started, cancelled). Only the span's events
# are read, in time order from ironclaw_events_at_idx, each event's queue by a probe of its job's
# primary key (a join would hash every job kept). Each event's level is the backlog just after it
# (events of one transaction share their time, and count together). Per bucket: the most waiting
# at any moment of it (its start included) and the number waiting at its end.
BACKLOG_SQL = f"""
WITH {_BUCKETS}, flow AS (
    SELECT e.at, CASE WHEN e.type IN ('started', 'cancelled') THEN -1 ELSE 1 END AS delta
    FROM procrastinate_events e
    WHERE e.at >= {_FIRST}
      AND e.type IN ('deferred', 'deferred_for_retry', 'retried', 'started', 'cancelled')
      AND (SELECT j.queue_name FROM procrastinate_jobs j WHERE j.id = e.job_id) = %(queue)s
), waiting_now AS (
    SELECT count(*) AS jobs FROM procrastinate_jobs
    WHERE queue_name = %(queue)s AND status = 'todo'
), levels AS (
    SELECT {_bucket_of("at")} AS start, delta,
        (SELECT jobs FROM waiting_now) - sum(delta) OVER ()
            + sum(delta) OVER (ORDER BY at) AS level
    FROM flow
), per_bucket AS (
    SELECT start, max(level) AS peak, sum(delta) AS net FROM levels GROUP BY start
), ends AS (
    SELECT b.start, p.peak, coalesce(p.net, 0) AS net,
        (SELECT jobs FROM waiting_now) - coalesce(sum(p.net) OVER (
            ORDER BY b.start ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING), 0) AS at_end
    FROM buckets b LEFT JOIN per_bucket p ON p.start = b.start
)
SELECT start,
    greatest(0, at_end - net, coalesce(peak, 0))::bigint,
    greatest(0, at_end)::bigint
FROM ends ORDER BY start
"""


def _rows(sql: str, span: Span, **parameters: Any) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, {**span.parameters, **parameters})
        return list(cursor.fetchall())


def _column(rows: Sequence[tuple[Any, ...]], index: int) -> tuple[float | None, ...]:
    return tuple(None if row[index] is None else float(row[index]) for row in rows)


def _starts(rows: Sequence[tuple[Any, ...]]) -> tuple[datetime, ...]:
    return tuple(row[0] for row in rows)


def turns_chart(span: Span) -> ChartData:
    rows = _rows(TURNS_SQL, span)
    return ChartData(
        key="turns",
        title=f"Turns finished per {span.step_label}, by outcome",
        unit="turns",
        stacked=True,
        starts=_starts(rows),
        step=span.step,
        series=(
            Series("completed", "completed", _column(rows, 1)),
            Series("failed", "failed", _column(rows, 2)),
            Series("stopped", "stopped", _column(rows, 3)),
            Series("other", "other", _column(rows, 4)),
        ),
        note="Threads by the time they finished (finished_at) and their final state; stopped "
        "includes max_iterations. A thread that never finishes (still running) is not counted.",
    )


def _percentiles(span: Span, sql: str, key: str, title: str, counted: str, note: str) -> ChartData:
    rows = _rows(sql, span)
    return ChartData(
        key=key,
        title=title,
        unit="ms",
        stacked=False,
        starts=_starts(rows),
        step=span.step,
        series=(
            Series("p50", "p50 (median)", _column(rows, 1)),
            Series("p95", "p95", _column(rows, 2), dashed=True),
        ),
        note=note,
        counts=tuple(int(row[3]) for row in rows),
        counted=counted,
    )


def overhead_chart(span: Span) -> ChartData:
    return _percentiles(
        span,
        OVERHEAD_SQL,
        "overhead",
        "Turn overhead (end to end minus model time), p50 and p95",
        "turns",
        "Threads that finished in each bucket after at least one claim: finished_at minus "
        "enqueued_at (else created_at) minus model time, as on a thread's page and in the "
        "ironclaw_turn_overhead_seconds metric. A thread paused for a gate counts its pause. "
        "No line where no thread finished.",
    )


def queue_wait_chart(span: Span) -> ChartData:
    return _percentiles(
        span,
        QUEUE_WAIT_SQL,
        "queue-wait",
        "Queue wait (runnable to claimed), p50 and p95",
        "claims",
        "Claims made in each bucket: claimed_at minus enqueued_at (spawn or requeue). Only a "
        "thread's latest claim is kept, so a thread claimed twice counts once; a paused thread "
        "resumed by a message is left out (it waited for the message, not for a worker). No "
        "line where nothing was claimed.",
    )


def indexing_backlog_chart(span: Span) -> ChartData:
    rows = _rows(BACKLOG_SQL, span, queue=INDEXING_QUEUE)
    retention = settings.JOBS_RETENTION_DAYS
    kept = f"{retention} days" if retention else "for ever"
    return ChartData(
        key="indexing-backlog",
        title="Indexing backlog (documents waiting for a worker)",
        unit="documents",
        stacked=False,
        starts=_starts(rows),
        step=span.step,
        series=(
            Series("peak", "most waiting", _column(rows, 1)),
            Series("waiting", "waiting at the bucket's end", _column(rows, 2), dashed=True),
        ),
        note="Jobs of the indexing queue waiting for a worker (one per document, a burst of "
        "writes to one document leaves one), those waiting for a retry included: the number "
        "waiting now, replayed backwards through the queue's job events. Finished jobs and "
        f"their events are kept {kept} (JOBS_RETENTION_DAYS, at least a day), so a day's "
        "history is whole; a waiting job deleted by hand leaves it. Documents written with "
        "WORKSPACE_INDEXING=inline never wait, and a pending document whose job was lost "
        "counts once the minute's sweep queues it again.",
    )


CHARTS = (turns_chart, overhead_chart, queue_wait_chart, indexing_backlog_chart)


def charts_data(span: Span, *, statement_timeout_ms: int) -> list[ChartData]:
    """Every chart's data, in one transaction whose statements give up after
    ``statement_timeout_ms`` (a locked table or a slow database raises DatabaseError)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT set_config('statement_timeout', %s, true)", [f"{statement_timeout_ms}ms"]
        )
        return [chart(span) for chart in CHARTS]
