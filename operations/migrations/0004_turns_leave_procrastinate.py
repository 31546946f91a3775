from django.db import migrations


class Migration(migrations.Migration):
    """Turns are no longer Procrastinate jobs: the turn worker takes them from the thread rows.

    Run jobs still waiting from before (task ``conversations.tasks.run_thread``) have no worker
    any more; their threads are ``created`` and the turn worker claims them, so the jobs go. The
    index on queueing locks served only a thread's list of run jobs in the admin, which is gone.
    Reversing recreates the index; the deleted jobs are not needed by the old code either (its
    lease sweeper and requeue defer new ones).
    """

    atomic = False

    dependencies = [
        ("ironclaw_site", "0003_jobs_queueing_lock_index"),
    ]

    operations = [
        migrations.RunSQL(
            "DELETE FROM procrastinate_jobs "
            "WHERE task_name = 'conversations.tasks.run_thread' AND status = 'todo'",
            reverse_sql=migrations.RunSQL.noop,
        ),
        migrations.RunSQL(
            "DROP INDEX CONCURRENTLY IF EXISTS ironclaw_jobs_queueing_lock_idx",
            reverse_sql=(
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS ironclaw_jobs_queueing_lock_idx "
                "ON procrastinate_jobs (queueing_lock) WHERE queueing_lock IS NOT NULL"
            ),
        ),
    ]
