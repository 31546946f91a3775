"""Turns whose runner raises on every claim: failed after a few, not retried for ever.

A runner that raises leaves the turn's lease to lapse, and the lease sweep puts the thread back
in the queue, so the next claim resumes it from its checkpoint: right for a bug that a retry
outlives, wrong for one that every claim meets again (a checkpoint the engine cannot read, a
goal that crashes the model client). Such a turn would hold a worker slot for a lease at a time
for ever, show as running, and never reach the failures an operator looks at.

So each crash is noted on the thread (``metadata["crashed_claims"]``: the claim numbers whose run
raised, the latest few), under the lease it was claimed with; when the last
``CRASHES_BEFORE_FAILING`` claims in a row all crashed, the thread fails with the error, through
the same service as any outcome (its conversation is told, its unread messages move to a
follow-up thread). A database error is not counted: an outage explains it, and a retry once the
database is back is what heals it. Nothing is written on the path of a turn that does not crash.
"""

from __future__ import annotations

import logging

from django.db import DatabaseError, transaction

from conversations.models import Thread, ThreadState
from conversations.services import ThreadOutcome, thread_outcome_record
from core.errors import ApplicationError

logger = logging.getLogger(__name__)

CRASHES_BEFORE_FAILING = 3
# The error text kept in the outcome.
ERROR_TEXT_LIMIT = 1000


def turn_crash_record(thread: Thread, worker_id: str, error: BaseException) -> bool:
    """Note that the run of ``thread`` claimed by ``worker_id`` raised ``error``; fail the thread
    when its last ``CRASHES_BEFORE_FAILING`` claims all crashed. True when it failed it."""
    if isinstance(error, DatabaseError):
        return False
    epoch = thread.claim_count
    with transaction.atomic():
        metadata = (
            Thread.objects.select_for_update()
            .filter(
                pk=thread.pk,
                user_id=thread.user_id,
                state=ThreadState.RUNNING,
                claim_count=epoch,
                lease_owner=worker_id,
            )
            .values_list("metadata", flat=True)
            .first()
        )
        if metadata is None:
            # The lease is no longer this run's (taken over, stopped): nothing to note.
            return False
        metadata = metadata if isinstance(metadata, dict) else {}
        noted = [n for n in metadata.get("crashed_claims", []) if isinstance(n, int)]
        crashed = [*noted[-(CRASHES_BEFORE_FAILING - 1) :], epoch]
        Thread.objects.filter(pk=thread.pk, user_id=thread.user_id).update(
            metadata={**metadata, "crashed_claims": crashed}
        )
    in_a_row = crashed[-CRASHES_BEFORE_FAILING:] == list(
        range(epoch - CRASHES_BEFORE_FAILING + 1, epoch + 1)
    )
    if not in_a_row:
        return False
    text = (
        f"the engine crashed on {CRASHES_BEFORE_FAILING} claims in a row; the last: "
        f"{type(error).__name__}: {error}"
    )[:ERROR_TEXT_LIMIT]
    try:
        thread_outcome_record(
            user_id=thread.user_id,
            thread_id=thread.pk,
            worker_id=worker_id,
            lease_epoch=epoch,
            outcome=ThreadOutcome(kind="failed", error=text),
        )
    except ApplicationError as refused:
        # Stopped or taken over meanwhile: whoever did it decided its end.
        logger.warning("thread %s: crash outcome refused: %s", thread.pk, refused.message)
        return False
    logger.error("thread %s failed: %s", thread.pk, text, extra={"thread_id": str(thread.pk)})
    return True
