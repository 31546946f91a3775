"""The turns benchmark's baseline runner: ``THREAD_RUNNER=bench.baseline_runner.run_thread``.

It runs the reference engine's turn unchanged, except that every checkpoint is written under one
database-wide lock, as the origin system held one global mutex across all conversations' state
writes. Only ``bench/turns.py`` names it; the engine knows nothing of the lock.
"""

from __future__ import annotations

from django.db import connection, transaction

from engine import runner
from engine.checkpoint import TurnState, checkpoint_save

# A lock id of our own, so the baseline never waits on an advisory lock the service takes.
GLOBAL_CHECKPOINT_LOCK = 0x1C1A_0001


def checkpoint_save_globally_locked(
    state: TurnState, *, user_id: str, changed_by: str, conversation_too: bool = False
) -> None:
    # A transaction's lock: held until the checkpoint commits (with the inbox take when the
    # checkpoint records one), as the origin's mutex was held across the write.
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [GLOBAL_CHECKPOINT_LOCK])
        checkpoint_save(
            state, user_id=user_id, changed_by=changed_by, conversation_too=conversation_too
        )


def run_thread(*, thread_id: str) -> None:
    """``THREAD_RUNNER`` for the baseline: the reference turn, its checkpoints globally locked."""
    runner.run_thread(thread_id=thread_id, checkpoint_save=checkpoint_save_globally_locked)
