from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    # Built without locking out writes: every message and reply inserts entries.
    atomic = False

    dependencies = [
        ("conversations", "0008_thread_state_fsm_on_state_change"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="conversationentry",
            index=models.Index(
                fields=["conversation", "sender", "seq"], name="entry_by_sender_seq"
            ),
        ),
    ]
