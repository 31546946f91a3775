from django.db import migrations


class Migration(migrations.Migration):
    """Procrastinate indexes a job's queueing lock only while the job waits (status todo); a
    thread's admin page lists all its run jobs by that lock, which scanned every job ever run.

    CONCURRENTLY (so outside a transaction): deferrals keep going while it builds.
    """

    atomic = False

    dependencies = [
        ("ironclaw_site", "0002_worker_name"),
        ("procrastinate", "0041_post_retry_failed_job"),
    ]

    operations = [
        migrations.RunSQL(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS ironclaw_jobs_queueing_lock_idx "
            "ON procrastinate_jobs (queueing_lock) WHERE queueing_lock IS NOT NULL",
            reverse_sql="DROP INDEX CONCURRENTLY IF EXISTS ironclaw_jobs_queueing_lock_idx",
        ),
    ]
