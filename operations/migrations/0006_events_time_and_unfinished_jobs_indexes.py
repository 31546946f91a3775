from django.db import migrations


class Migration(migrations.Migration):
    """Procrastinate indexes its events by job only; the admin's indexing backlog chart reads the
    events of the last hour or day by time, which scanned every event kept (JOBS_RETENTION_DAYS
    of them). And the dashboard's queue figures count the jobs still waiting, running or failed,
    which read every job kept: a partial index holds only those.

    CONCURRENTLY (so outside a transaction): jobs keep moving while it builds.
    """

    atomic = False

    dependencies = [
        ("ironclaw_site", "0005_worker_host_pid"),
    ]

    operations = [
        migrations.RunSQL(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS ironclaw_events_at_idx "
            "ON procrastinate_events (at)",
            reverse_sql="DROP INDEX CONCURRENTLY IF EXISTS ironclaw_events_at_idx",
        ),
        migrations.RunSQL(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS ironclaw_jobs_unfinished_idx "
            "ON procrastinate_jobs (queue_name, status) "
            "WHERE status IN ('todo', 'doing', 'failed')",
            reverse_sql="DROP INDEX CONCURRENTLY IF EXISTS ironclaw_jobs_unfinished_idx",
        ),
    ]
