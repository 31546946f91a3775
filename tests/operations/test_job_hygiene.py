"""Finished jobs are pruned after JOBS_RETENTION_DAYS, in batches, by a command and a periodic
task; the periodic maintenance is registered on the default queue."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from procrastinate.contrib.django import app
from pytest_django.fixtures import Settings as SettingsWrapper

from operations.jobs import DEAD_WORKER_KEPT, stalled_workers_prune
from operations.tasks import finished_jobs_prune_job, stalled_jobs_retry_job
from operations.workers import WORKER_NAME_INSERT_SQL, worker_name_params

pytestmark = pytest.mark.django_db

# Status changes a job goes through to reach each status (Procrastinate's triggers log each one
# as an event, stamped now; the test then moves the events back in time).
_PATHS = {
    "todo": [],
    "doing": ["doing"],
    "succeeded": ["doing", "succeeded"],
    "failed": ["doing", "failed"],
    "cancelled": ["cancelled"],
    "aborted": ["doing", "aborted"],
}


@pytest.fixture(autouse=True)
def _no_other_jobs() -> None:
    """Jobs left by other (transactional) tests; deleted inside this test's transaction only."""
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM procrastinate_periodic_defers")
        cursor.execute("DELETE FROM procrastinate_jobs")


def _job(status: str, *, last_event_days_ago: float) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO procrastinate_jobs (queue_name, task_name) "
            "VALUES ('default', 'tests.job') RETURNING id"
        )
        job_id: int = cursor.fetchone()[0]
        for step in _PATHS[status]:
            if step == "aborted":
                cursor.execute(
                    "UPDATE procrastinate_jobs SET abort_requested = true WHERE id = %s", [job_id]
                )
            cursor.execute(
                "UPDATE procrastinate_jobs SET status = %s WHERE id = %s", [step, job_id]
            )
        cursor.execute(
            "UPDATE procrastinate_events SET at = now() - make_interval(days => %s) "
            "WHERE job_id = %s",
            [last_event_days_ago, job_id],
        )
    return job_id


def _remaining_jobs() -> set[int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM procrastinate_jobs")
        return {row[0] for row in cursor.fetchall()}


def _count(table: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {table}")
        return int(cursor.fetchone()[0])


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_prune_jobs_deletes_old_finished_jobs_with_their_events_in_batches() -> None:
    old_finished = [
        _job(status, last_event_days_ago=8)
        for status in ("succeeded", "failed", "cancelled", "aborted", "succeeded")
    ]
    kept = {
        _job("succeeded", last_event_days_ago=6),
        _job("todo", last_event_days_ago=30),
        _job("doing", last_event_days_ago=30),
    }
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO procrastinate_periodic_defers (task_name, defer_timestamp, job_id) "
            "VALUES ('tests.job', 1, %s)",
            [old_finished[0]],
        )

    output = run("prune_jobs", "--days", "7", "--batch-size", "2")

    assert "Found 5 finished job(s) older than 7 days." in output
    assert "Deleted 5 job(s)" in output
    assert "1 periodic-defer row(s) in 3 batch(es)" in output
    assert _remaining_jobs() == kept
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM procrastinate_events WHERE job_id = ANY(%s)", [old_finished]
        )
        assert cursor.fetchone()[0] == 0
    assert _count("procrastinate_periodic_defers") == 0


def test_prune_jobs_dry_run_counts_and_deletes_nothing() -> None:
    jobs = {_job("failed", last_event_days_ago=10), _job("succeeded", last_event_days_ago=1)}
    events = _count("procrastinate_events")

    output = run("prune_jobs", "--days", "7", "--dry-run")

    assert "Found 1 finished job(s) older than 7 days." in output
    assert "Dry run" in output
    assert _remaining_jobs() == jobs
    assert _count("procrastinate_events") == events


def test_prune_jobs_uses_the_retention_setting_and_a_rerun_finds_nothing(
    settings: SettingsWrapper,
) -> None:
    settings.JOBS_RETENTION_DAYS = 3
    recent = _job("succeeded", last_event_days_ago=2)
    _job("succeeded", last_event_days_ago=4)

    first = run("prune_jobs")
    second = run("prune_jobs")

    assert "Deleted 1 job(s)" in first
    assert "Deleted 0 job(s)" in second
    assert _remaining_jobs() == {recent}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--days", "0"], "--days must be between 1 and 36500, got 0."),
        (["--days", "-3"], "--days must be between 1 and 36500, got -3."),
        (["--days", "999999999"], "--days must be between 1 and 36500, got 999999999."),
        (["--days", "7", "--batch-size", "0"], "--batch-size must be at least 1, got 0."),
    ],
)
def test_prune_jobs_refuses_bad_options_naming_them(arguments: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        run("prune_jobs", *arguments)


def test_prune_jobs_without_days_refuses_when_retention_is_forever(
    settings: SettingsWrapper,
) -> None:
    settings.JOBS_RETENTION_DAYS = 0

    with pytest.raises(CommandError, match="JOBS_RETENTION_DAYS is 0"):
        run("prune_jobs")


def test_the_hourly_task_prunes_with_the_setting_and_keeps_everything_at_zero(
    settings: SettingsWrapper,
) -> None:
    old = _job("succeeded", last_event_days_ago=400)
    settings.JOBS_RETENTION_DAYS = 0

    finished_jobs_prune_job(timestamp=0)
    kept_at_zero = _remaining_jobs()
    settings.JOBS_RETENTION_DAYS = 7
    finished_jobs_prune_job(timestamp=0)

    assert kept_at_zero == {old}
    assert _remaining_jobs() == set()


def test_maintenance_is_periodic_on_the_default_queue() -> None:
    periodic = {
        task.task.name: (task.cron, task.task.queue)
        for task in app.periodic_registry.periodic_tasks.values()
    }

    assert periodic["ironclaw_site.tasks.prune_finished_jobs"] == ("23 * * * *", "default")
    assert periodic["ironclaw_site.tasks.retry_stalled_jobs"] == ("* * * * *", "default")
    assert periodic["workspace.tasks.prune_versions"] == ("17 3 * * *", "default")
    assert periodic["workspace.tasks.workspace_hygiene"] == ("47 3 * * *", "default")
    assert periodic["workspace.tasks.requeue_pending_indexing"] == ("* * * * *", "default")
    assert periodic["engine.tasks.prune_checkpoints"] == ("41 * * * *", "default")


def _worker(silent_seconds: float) -> int:
    """A registered worker (with its kind's name) whose last heartbeat was that long ago."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT worker_id FROM procrastinate_register_worker_v1()")
        (worker_id,) = cursor.fetchone()
        cursor.execute(
            "UPDATE procrastinate_workers SET last_heartbeat = now() - make_interval(secs => %s)"
            " WHERE id = %s",
            [silent_seconds, worker_id],
        )
        cursor.execute(
            WORKER_NAME_INSERT_SQL, worker_name_params(worker_id=worker_id, name="turns")
        )
    return int(worker_id)


def test_the_minute_maintenance_removes_workers_dead_for_minutes_and_retries_their_jobs(
    settings: SettingsWrapper,
) -> None:
    settings.WORKER_STALLED_SECONDS = 30
    kept = DEAD_WORKER_KEPT.total_seconds()
    live, just_dead, long_dead = _worker(0), _worker(30 + kept - 60), _worker(30 + kept + 60)
    job_id = app.configure_task("ironclaw_site.tasks.prune_finished_jobs").defer(timestamp=0)
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s WHERE id = %s",
            [long_dead, job_id],
        )

    stalled_jobs_retry_job(timestamp=0)

    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM procrastinate_workers ORDER BY id")
        workers = [row[0] for row in cursor.fetchall()]
        cursor.execute("SELECT worker_id FROM ironclaw_site_workername ORDER BY worker_id")
        named = [row[0] for row in cursor.fetchall()]
        cursor.execute("SELECT status, worker_id FROM procrastinate_jobs WHERE id = %s", [job_id])
        job = cursor.fetchone()
    # The one dead for minutes goes (a dead worker stays listed, in red, for DEAD_WORKER_KEPT).
    # Other tests' workers may be left in Procrastinate's tables: only these three are looked at.
    assert [n for n in workers if n in (live, just_dead, long_dead)] == [live, just_dead]
    assert [n for n in named if n in (live, just_dead, long_dead)] == [live, just_dead]
    # Its running job was retried first.
    assert job == ("todo", None)
    # A second run finds nothing more to remove.
    assert stalled_workers_prune() == 0
