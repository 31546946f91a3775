from django.db import migrations

# The prefixes are engine.checkpoint's THREAD_CHECKPOINTS and CONVERSATION_CHECKPOINTS, spelled as
# engine.retention's statements spell them, so the planner can prove they want these rows.
INDEXES = {
    "engine_thread_checkpoints_idx": "engine/.runtime/threads/",
    "engine_conversation_checkpoints_idx": "engine/.runtime/conversations/",
}


class Migration(migrations.Migration):
    """The checkpoint documents of threads and of conversations, one index each, for their
    retention (engine.retention): a run walks each kind's checkpoints in id order instead of
    scanning every document of every tenant. Keyed on id alone, which a checkpoint write never
    changes, so those writes stay HOT updates of their row and add no index entry.

    CONCURRENTLY (so outside a transaction): writes go on while they build.
    """

    atomic = False

    dependencies = [("workspace", "0002_cascade_deletes")]

    operations = [
        migrations.RunSQL(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON workspace_document (id) "
            f"WHERE is_runtime AND path LIKE '{prefix}%'",
            reverse_sql=f"DROP INDEX CONCURRENTLY IF EXISTS {name}",
        )
        for name, prefix in INDEXES.items()
    ]
