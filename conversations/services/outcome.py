"""How a thread's run ends, as its engine reports it: the outcome and what the run cost recorded
on the thread, the entries that say so, and the follow-up thread that takes the messages it
never read."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from decimal import Decimal
from functools import partial

from django.db import transaction
from django.utils import timezone

from conversations.errors import InvalidThreadTransition, LeaseNotHeld, OutcomeAlreadyRecorded
from conversations.metrics import turn_observe
from conversations.models import (
    MAX_MODEL_CALLS_KEPT,
    ConversationEntry,
    EntrySender,
    Thread,
    ThreadKind,
    ThreadState,
)
from conversations.services.entry_writer import EntryWriter
from conversations.services.lease import lease_check
from conversations.services.lifecycle import thread_follow_up_spawn, thread_lease_release
from conversations.services.locking import locked_transaction, thread_lock_with_conversation
from conversations.services.operator_actions import (
    CANCEL_REQUESTED_BY,
    OPERATOR_CANCEL_REASON,
    operator_reason,
)
from conversations.services.turn_queue import thread_runnable_notify
from conversations.services.validation import check_outcome, check_usage
from conversations.services.values import OutcomeResult, ThreadOutcome, ThreadUsage
from core.db import ModelUpdate

logger = logging.getLogger(__name__)

# Every outcome saves its thread; the ORM's UPDATE of 26 columns cost 0.7 ms to build and send.
_THREAD_UPDATE = ModelUpdate(Thread)

_OUTCOME_STATE = {
    "completed": ThreadState.COMPLETED,
    "stopped": ThreadState.STOPPED,
    "max_iterations": ThreadState.STOPPED,
    "failed": ThreadState.FAILED,
    "gate_paused": ThreadState.WAITING,
}


def _usage_add(thread: Thread, usage: ThreadUsage) -> None:
    """Add a run's usage to a locked thread before it is saved."""
    thread.step_count += usage.steps
    thread.input_tokens += usage.input_tokens
    thread.output_tokens += usage.output_tokens
    thread.tokens_used += usage.input_tokens + usage.output_tokens
    thread.cost_usd += Decimal(str(usage.cost_usd))
    thread.model_time_ms += round(usage.model_ms)
    thread.model_calls = [*thread.model_calls, *usage.model_calls][-MAX_MODEL_CALLS_KEPT:]


def _outcome_entries(outcome: ThreadOutcome) -> list[tuple[EntrySender, str]]:
    """The entries an outcome writes: the agent's reply when it carries one, whatever ended the
    run (a turn cut short at a limit still answers with what it has), then, unless it completed,
    the system entry that says how the run ended."""
    entries = [(EntrySender.AGENT, outcome.response)] if outcome.response else []
    if outcome.kind == "stopped":
        entries.append((EntrySender.SYSTEM, "Thread stopped"))
    elif outcome.kind == "max_iterations":
        entries.append((EntrySender.SYSTEM, "Thread reached max iterations"))
    elif outcome.kind == "failed":
        entries.append((EntrySender.SYSTEM, f"Thread failed: {outcome.error}"))
    elif outcome.kind == "gate_paused":
        entries.append(
            (
                EntrySender.SYSTEM,
                f"Gate '{outcome.gate_name}' paused execution of action: {outcome.gate_action}",
            )
        )
    return entries


def thread_outcome_record(
    *,
    user_id: str,
    thread_id: uuid.UUID,
    outcome: ThreadOutcome,
    worker_id: str | None = None,
    usage: ThreadUsage | None = None,
    lease_epoch: int | None = None,
    then: Callable[[], None] | None = None,
) -> OutcomeResult:
    """Record how a thread's run ended (and what the run cost) and write the conversation
    entries that say so.

    Locks the conversation, then the thread. Undelivered messages for the thread (sent after its
    last inbox read) and queued messages become a follow-up thread in the same transaction.
    ``then`` runs last in that transaction (the built-in engine writes its final checkpoint
    there): both commit, or neither.
    """
    check_outcome(outcome)
    if usage is not None:
        check_usage(usage)
    with locked_transaction(bound_by_first_statement=True):
        result = _outcome_apply(user_id, thread_id, outcome, worker_id, usage, lease_epoch)
        if then is not None:
            then()
    return result


def _outcome_apply(
    user_id: str,
    thread_id: uuid.UUID,
    outcome: ThreadOutcome,
    worker_id: str | None,
    usage: ThreadUsage | None,
    lease_epoch: int | None,
) -> OutcomeResult:
    conversation, thread = thread_lock_with_conversation(user_id, thread_id)
    _check_outcome_allowed(thread, outcome, worker_id, lease_epoch)
    # Counted and logged once the outcome is durable, whichever return below ends it.
    transaction.on_commit(partial(_outcome_observe, thread))
    if usage is not None:
        _usage_add(thread, usage)
    now = timezone.now()
    recorded = {**outcome.as_json(), "recorded_at": now.isoformat(), "worker_id": worker_id}
    requested_by = thread.metadata.get(CANCEL_REQUESTED_BY) if thread.cancel_requested else None
    if requested_by and outcome.kind == "stopped":
        # An operator asked it to stop (thread_request_cancel): the outcome says who.
        recorded["reason"] = operator_reason(OPERATOR_CANCEL_REASON, str(requested_by))

    if thread.cancel_requested and not thread.tracked:
        # Interrupted or cleared: the conversation has moved on; the run only ends here.
        thread_lease_release(thread, state=ThreadState.STOPPED)
        thread.outcome = {**recorded, "kind": "stopped", "reported_kind": outcome.kind}
        thread.finished_at = now
        _THREAD_UPDATE.update(thread)
        return OutcomeResult(thread=thread, entries=[])

    was_tracked = thread.tracked
    thread_lease_release(thread, state=_OUTCOME_STATE[outcome.kind])
    thread.outcome = recorded
    if outcome.kind != "gate_paused":
        thread.tracked = False
        thread.finished_at = now
    # Saved before any follow-up is inserted: the one-tracked-thread index checks each row.
    _THREAD_UPDATE.update(thread)
    if conversation is None:
        return OutcomeResult(thread=thread, entries=[])

    writer = EntryWriter(conversation)
    for sender, text in _outcome_entries(outcome):
        writer.add(sender, text, thread=thread)

    follow_up = None
    if outcome.kind == "gate_paused":
        if ConversationEntry.objects.undelivered_for(thread).exists():
            # Messages wait in the paused thread's inbox: it is runnable again.
            thread_runnable_notify(thread)
    elif was_tracked and thread.kind == ThreadKind.FOREGROUND:
        follow_up = thread_follow_up_spawn(conversation, writer, thread)
    entries = writer.flush()
    return OutcomeResult(
        thread=thread, entries=entries, follow_up=follow_up.thread if follow_up else None
    )


def _outcome_observe(thread: Thread) -> None:
    turn_observe(thread)
    outcome = thread.outcome or {}
    logger.info(
        "thread %s ended: %s",
        thread.pk,
        outcome.get("kind"),
        extra={
            "thread_id": str(thread.pk),
            "tenant": thread.user_id,
            "outcome": outcome.get("kind"),
            "state": thread.state,
            "model_time_ms": thread.model_time_ms,
        },
    )


def _check_outcome_allowed(
    thread: Thread, outcome: ThreadOutcome, worker_id: str | None, lease_epoch: int | None
) -> None:
    if lease_epoch is not None:
        # A writer that names its epoch records only under the lease it claimed: not after a
        # takeover, nor after the sweeper released its lapsed lease.
        if thread.is_terminal and thread.claim_count == lease_epoch:
            raise OutcomeAlreadyRecorded(details={"state": thread.state})
        lease_check(thread, worker_id, lease_epoch)
        return
    if thread.is_terminal:
        raise OutcomeAlreadyRecorded(details={"state": thread.state})
    if thread.state == ThreadState.RUNNING:
        if worker_id != thread.lease_owner:
            raise LeaseNotHeld(details={"state": thread.state})
        return
    if outcome.kind not in ("stopped", "failed"):
        raise InvalidThreadTransition(
            f"A {thread.state} thread can only be recorded as stopped or failed; claim it first.",
            details={"state": thread.state},
        )
