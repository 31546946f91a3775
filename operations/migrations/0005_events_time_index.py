from django.db import migrations


class Migration(migrations.Migration):
    """Procrastinate indexes its events by job only; the admin's indexing backlog chart reads the
    events of the last hour or day by time, which scanned every event kept (JOBS_RETENTION_DAYS
    of them).

    CONCURRENTLY (so outside a transaction): jobs keep moving while it builds.
    """

    atomic = False

    dependencies = [
        ("ironclaw_site", "0004_turns_leave_procrastinate"),
    ]

    operations = [
        migrations.RunSQL(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS ironclaw_events_at_idx "
            "ON procrastinate_events (at)",
            reverse_sql="DROP INDEX CONCURRENTLY IF EXISTS ironclaw_events_at_idx",
        ),
    ]
