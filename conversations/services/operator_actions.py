"""What an operator may do to a thread, whoever runs it: request its cancellation, stop it now,
or requeue it. Each says what it did, or why it skipped the thread.

``operator`` (the admin's username) is named in what an action records: a stop's outcome reason
("stopped by an operator (alice)"), a cancel request (the thread's metadata, then the outcome its
engine records) and the log; not in the conversation, whose entry is for the tenant's users. The
API and the engines never pass it.
"""

from __future__ import annotations

import logging
import uuid

from django.db.models import BooleanField, ExpressionWrapper, Q
from django.db.models.functions import Now
from django.utils import timezone

from conversations.errors import ThreadBusy, ThreadNotFound
from conversations.models import Conversation, EntrySender, Thread, ThreadKind, ThreadState
from conversations.services.entry_writer import EntryWriter
from conversations.services.lifecycle import thread_follow_up_spawn, thread_lease_release
from conversations.services.locking import (
    lock_bound,
    locked_transaction,
    thread_lock_with_conversation,
)
from conversations.services.values import OperatorActionResult

logger = logging.getLogger(__name__)

OPERATOR_STOP_REASON = "stopped by an operator"
OPERATOR_CANCEL_REASON = "cancelled by an operator"
# thread.metadata's key for who asked a running thread to stop (read when its engine records it).
CANCEL_REQUESTED_BY = "cancel_requested_by"


def operator_reason(reason: str, operator: str | None) -> str:
    """``reason``, naming the operator when there is one: "stopped by an operator (alice)"."""
    return f"{reason} ({operator})" if operator else reason


def thread_stop(
    *,
    user_id: str,
    thread_id: uuid.UUID,
    reason: str = OPERATOR_STOP_REASON,
    operator: str | None = None,
) -> OperatorActionResult:
    """Stop a live thread now, whoever runs it: stopped, lease cleared, untracked with a system
    entry, and its unread messages carried to a follow-up thread as any outcome does. The
    outcome's reason names ``operator`` when given.

    Locks the conversation, then the thread, as outcomes do: a worker's outcome racing with it
    either commits first (the thread is terminal: skipped) or finds it stopped (409).
    """
    with locked_transaction(bound_by_first_statement=True):
        conversation, thread = thread_lock_with_conversation(user_id, thread_id)
        if thread.is_terminal:
            return OperatorActionResult(thread.id, False, f"already {thread.state}", thread.state)
        stopped = _thread_stop_locked(conversation, thread, operator_reason(reason, operator))
    _log_done(stopped, operator)
    return stopped


def _thread_stop_locked(
    conversation: Conversation | None, thread: Thread, reason: str
) -> OperatorActionResult:
    was_state, was_tracked, lease_owner = thread.state, thread.tracked, thread.lease_owner
    now = timezone.now()
    thread_lease_release(thread, state=ThreadState.STOPPED)
    thread.cancel_requested = True
    thread.tracked = False
    thread.finished_at = now
    thread.outcome = {"kind": "stopped", "reason": reason, "recorded_at": now.isoformat()}
    # Saved before any follow-up is inserted: the one-tracked-thread index checks each row.
    thread.save()
    done = [f"stopped (was {was_state}" + (f", leased by {lease_owner}" if lease_owner else "")]
    # An untracked thread's end adds nothing to its conversation (interrupted or cleared).
    if conversation is not None and was_tracked:
        writer = EntryWriter(conversation)
        writer.add(EntrySender.SYSTEM, "Thread stopped by an operator", thread=thread)
        done.append("conversation untracked")
        if thread.kind == ThreadKind.FOREGROUND:
            follow_up = thread_follow_up_spawn(conversation, writer, thread)
            if follow_up is not None:
                done.append(
                    f"{follow_up.carried} unread message(s) moved to thread {follow_up.thread.id}"
                )
        writer.flush()
    return OperatorActionResult(thread.id, True, ", ".join(done) + ")", thread.state)


def thread_request_cancel(
    *, user_id: str, thread_id: uuid.UUID, operator: str | None = None
) -> OperatorActionResult:
    """Ask a running thread's engine to stop: it sees ``cancel_requested`` at its next heartbeat
    and records "stopped" (or the lease sweeper stops it once its lease runs out). ``operator``
    is kept in the thread's metadata (``cancel_requested_by``), and the outcome the engine
    records names them.

    A live thread nobody runs is stopped at once (no engine would ever see the request: a
    cancelled thread cannot be claimed). Locks the conversation, then the thread.
    """
    with locked_transaction(bound_by_first_statement=True):
        conversation, thread = thread_lock_with_conversation(user_id, thread_id)
        if thread.is_terminal:
            return OperatorActionResult(thread.id, False, f"already {thread.state}", thread.state)
        if thread.state != ThreadState.RUNNING:
            result = _thread_stop_locked(
                conversation, thread, operator_reason(OPERATOR_CANCEL_REASON, operator)
            )
        elif thread.cancel_requested:
            return OperatorActionResult(
                thread.id, False, "cancellation already requested", thread.state
            )
        else:
            thread.cancel_requested = True
            fields = ["cancel_requested", "updated_at"]
            if operator:
                thread.metadata = {**thread.metadata, CANCEL_REQUESTED_BY: operator}
                fields.append("metadata")
            thread.save(update_fields=fields)
            result = OperatorActionResult(
                thread.id,
                True,
                f"cancellation requested from {thread.lease_owner or 'its engine'}",
                thread.state,
            )
    _log_done(result, operator)
    return result


def thread_requeue(
    *, user_id: str, thread_id: uuid.UUID, operator: str | None = None
) -> OperatorActionResult:
    """Hand a running thread whose lease expired back to the queue (``created``) now, as the
    lease sweeper would at its next pass. A created thread is already waiting for a worker.

    Locks the thread row only (a thread-only operation, like the sweeper).
    """
    with locked_transaction(ThreadBusy, bound_by_first_statement=True):
        thread = (
            Thread.objects.for_update()
            .filter(lock_bound(), pk=thread_id, user_id=user_id)
            # The database's clock decides, as it does for claims and the sweeper.
            .annotate(
                lease_expired=ExpressionWrapper(
                    Q(lease_expires_at__lt=Now()), output_field=BooleanField()
                )
            )
            .first()
        )
        if thread is None:
            raise ThreadNotFound()
        skipped = _requeue_skipped(thread)
        if skipped is not None:
            return OperatorActionResult(thread.id, False, skipped, thread.state)
        # Back to created: the update's trigger wakes the workers when this commits.
        released = thread_lease_release(thread, state=ThreadState.CREATED)
        thread.enqueued_at = timezone.now()
        thread.save(update_fields=[*released, "enqueued_at", "updated_at"])
    result = OperatorActionResult(
        thread.id,
        True,
        "back to created (its lease had expired): waiting for a worker",
        thread.state,
    )
    _log_done(result, operator)
    return result


def _requeue_skipped(thread: Thread) -> str | None:
    """Why a locked thread (annotated ``lease_expired``) has nothing to requeue, if it has not."""
    if thread.cancel_requested:
        return "cancellation requested: a run would be refused; stop it"
    if thread.state == ThreadState.CREATED:
        return "created: already waiting for a worker"
    if thread.state != ThreadState.RUNNING:
        return f"{thread.state}: nothing to requeue"
    if not getattr(thread, "lease_expired", False):
        return f"running with a live lease held by {thread.lease_owner}"
    return None


def _log_done(result: OperatorActionResult, operator: str | None) -> None:
    """Log what an operator's action did (once committed; skips change nothing)."""
    if operator is None or not result.done:
        return
    logger.info(
        "thread %s: %s, by operator %s",
        result.thread_id,
        result.message,
        operator,
        extra={"thread_id": str(result.thread_id), "operator": operator},
    )
