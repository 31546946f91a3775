"""The turns benchmark's baseline runner: ``THREAD_RUNNER=bench.baseline_runner.run_thread``.

It runs the reference engine's turn unchanged, except that every checkpoint is written under one
process-wide mutex, as the origin system held one lock (an in-process RwLock) across all
conversations' state writes. Like the origin's, the mutex is taken before any database work, and a
turn waiting for it holds no database connection. Only ``bench/turns.py`` names it; the engine
knows nothing of the lock.
"""

from __future__ import annotations

import threading
from typing import Any

from django.db import connection

from conversations.models import Thread
from conversations.services import ThreadOutcome
from engine import runner
from engine.checkpoint import TurnState, checkpoint_save

# Every turn of the turn worker runs in a thread of one process: one mutex for them all.
# Reentrant: a turn's end holds it around the outcome, whose transaction writes the final
# checkpoint (which takes it again).
_GLOBAL_MUTEX = threading.RLock()


def checkpoint_save_globally_locked(
    state: TurnState,
    *,
    user_id: str,
    changed_by: str,
    conversation_too: bool = False,
    lease_epoch: int | None = None,
    step: dict[str, Any] | None = None,
) -> None:
    # A waiter returns its pooled connection first (the next statement takes one again), so a
    # queue of waiting turns never starves the others' claims and lease renewals.
    if not connection.in_atomic_block:
        connection.close()
    with _GLOBAL_MUTEX:
        checkpoint_save(
            state,
            user_id=user_id,
            changed_by=changed_by,
            conversation_too=conversation_too,
            lease_epoch=lease_epoch,
            step=step,
        )


class _BaselineTurn(runner.Turn):
    def _finish(self, state: TurnState, outcome: ThreadOutcome) -> None:
        # The final checkpoint is written in the outcome's transaction: the mutex is taken before
        # it begins, so a turn waiting for it holds no connection and no row lock.
        connection.close()
        with _GLOBAL_MUTEX:
            super()._finish(state, outcome)


def run_thread(*, thread: Thread, worker_id: str) -> None:
    """``THREAD_RUNNER`` for the baseline: the reference turn, its checkpoints globally locked."""
    _BaselineTurn(
        thread, worker_id=worker_id, checkpoint_save=checkpoint_save_globally_locked
    ).run()
