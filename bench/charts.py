"""Charts benchmark: the admin dashboard's charts over the last hour and day, on big tables.

Seeds 100,000 threads (30,000 of them finished in the last day, the rest over the week before)
and a week of indexing jobs (20,000 a day, three events each), then times ``charts("hour")`` and
``charts("day")`` (queries and drawing, wall clock, best of a few) and prints each query's plan:

    .venv/bin/python bench/charts.py [--threads 100000] [--jobs-per-day 20000] [--runs 5]

Runs against its own database (created, migrated, dropped), never the dev database.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# Run as a script, this folder comes first on the path: the checkout must come before it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scratch_database import scratch_database


def seed(threads: int, jobs_per_day: int) -> None:
    from django.db import connection

    day_share = min(30_000, threads)
    with connection.cursor() as cursor:
        # Finished threads: the last day's evenly spread, the rest over the six days before.
        # Each claimed 20-120 ms after its enqueue, 1 s of model time, 50-550 ms of overhead.
        cursor.execute(
            """
            INSERT INTO conversations_thread (
                id, user_id, kind, state, goal, tracked, lease_owner, cancel_requested,
                claim_count, step_count, tokens_used, input_tokens, output_tokens, cost_usd,
                model_time_ms, model_calls, event_seq, metadata, created_at, updated_at,
                enqueued_at, claimed_at, started_at, finished_at)
            SELECT gen_random_uuid(), 'user-' || (n %% 500), 'foreground',
                (ARRAY['completed', 'completed', 'completed', 'failed', 'stopped'])[1 + n %% 5],
                'bench', false, '', false, 1, 1, 0, 0, 0, 0, 1000, '[]', 1, '{}',
                done - interval '2 s', done, done - interval '2 s',
                done - interval '2 s' + (20 + n %% 100) * interval '1 ms',
                done - interval '2 s' + (20 + n %% 100) * interval '1 ms',
                done - interval '2 s' + interval '1.5 s' + (n %% 500) * interval '1 ms'
            FROM (
                SELECT n, CASE WHEN n <= %(day)s
                    THEN now() - n * interval '1 day' / %(day)s
                    ELSE now() - interval '1 day'
                        - (n - %(day)s) * interval '6 days' / greatest(1, %(rest)s) END AS done
                FROM generate_series(1, %(threads)s) AS n
            ) t
            """,
            {"threads": threads, "day": day_share, "rest": threads - day_share},
        )
        cursor.execute("ALTER TABLE procrastinate_jobs DISABLE TRIGGER USER")
        cursor.execute(
            """
            INSERT INTO procrastinate_jobs (id, queue_name, task_name, status)
            SELECT n, CASE WHEN n %% 10 = 0 THEN 'default' ELSE 'indexing' END,
                'workspace.tasks.index_document', 'succeeded'
            FROM generate_series(1, %(jobs)s) AS n
            """,
            {"jobs": jobs_per_day * 7},
        )
        cursor.execute("ALTER TABLE procrastinate_jobs ENABLE TRIGGER USER")
        # Deferred, started 0-30 s later, succeeded 2 s after that; a week's worth, evenly.
        cursor.execute(
            """
            INSERT INTO procrastinate_events (job_id, type, at)
            SELECT j.id, e.type::procrastinate_job_event_type,
                now() - (%(jobs)s - j.id) * interval '7 days' / %(jobs)s + e.after
                    * ((j.id %% 30) * interval '1 s' + interval '2 s') / 2
            FROM procrastinate_jobs j CROSS JOIN (VALUES
                ('deferred', 0), ('started', 1), ('succeeded', 2)) AS e(type, after)
            """,
            {"jobs": jobs_per_day * 7},
        )
        cursor.execute("SELECT setval('procrastinate_jobs_id_seq', %s)", [jobs_per_day * 7])
        cursor.execute("ANALYZE")


def best_ms(span: str, runs: int) -> float:
    from operations.charts import charts

    times = []
    for _ in range(runs):
        started = time.perf_counter()
        charts(span)
        times.append((time.perf_counter() - started) * 1000)
    return min(times)


def plans(span_name: str) -> None:
    from django.db import connection

    from operations import chart_data

    span = chart_data.SPANS[span_name]
    for name, sql, extra in (
        ("turns", chart_data.TURNS_SQL, {}),
        ("overhead", chart_data.OVERHEAD_SQL, {}),
        ("queue wait", chart_data.QUEUE_WAIT_SQL, {}),
        ("indexing backlog", chart_data.BACKLOG_SQL, {"queue": chart_data.INDEXING_QUEUE}),
    ):
        with connection.cursor() as cursor:
            cursor.execute(
                f"EXPLAIN (ANALYZE, COSTS OFF, SUMMARY ON) {sql}",
                {**span.parameters, **extra},
            )
            lines = [row[0] for row in cursor.fetchall()]
        scans = [line.strip() for line in lines if "Scan" in line]
        print(f"  {name}: {lines[-1].strip()}; {'; '.join(scans)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=100_000)
    parser.add_argument("--jobs-per-day", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()
    with scratch_database("bench_charts"):
        from operations.charts import charts

        started = time.perf_counter()
        seed(options.threads, options.jobs_per_day)
        print(f"seeded in {time.perf_counter() - started:.1f} s")
        for span in ("hour", "day"):
            board = charts(span)
            assert not board.unavailable, board.unavailable
            print(f"charts({span!r}): {best_ms(span, options.runs):.0f} ms")
            plans(span)


if __name__ == "__main__":
    main()
