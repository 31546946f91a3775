"""A thread's life on a worker: claim, lease renewal, inbox, suspend, outcome, lease sweeper;
and what an operator may do to it: request cancellation, stop, requeue."""

from __future__ import annotations

import datetime
import logging
import uuid
from decimal import Decimal
from functools import partial
from typing import Any

from django.db import transaction
from django.db.models import BooleanField, ExpressionWrapper, F, Q, Subquery
from django.db.models.functions import Coalesce, Now
from django.utils import timezone

from conversations import selectors
from conversations.errors import (
    InvalidThreadTransition,
    LeaseNotHeld,
    OutcomeAlreadyRecorded,
    ThreadBusy,
    ThreadNotClaimable,
    ThreadNotFound,
)
from conversations.metrics import turn_observe
from conversations.models import (
    MAX_MODEL_CALLS_KEPT,
    Conversation,
    ConversationEntry,
    EntrySender,
    Thread,
    ThreadKind,
    ThreadState,
)
from conversations.services.messages import thread_spawn
from conversations.services.results import (
    ClaimedThread,
    OperatorActionResult,
    OutcomeResult,
    SweepResult,
    ThreadOutcome,
    ThreadUsage,
)
from conversations.services.transactions import (
    EntryWriter,
    lock_bound,
    locked_transaction,
    thread_lock_with_conversation,
    thread_run_enqueue,
)
from conversations.services.validation import (
    check_outcome,
    check_usage,
    check_worker_id,
    lease_duration,
)
from core.db import lock_waits_bounded, update_returning

logger = logging.getLogger(__name__)

_OUTCOME_STATE = {
    "completed": ThreadState.COMPLETED,
    "stopped": ThreadState.STOPPED,
    "max_iterations": ThreadState.STOPPED,
    "failed": ThreadState.FAILED,
    "gate_paused": ThreadState.WAITING,
}


def _lease_taken(worker_id: str, duration: datetime.timedelta) -> dict[str, Any]:
    """The update that hands a thread's lease to ``worker_id`` (claim and claim-next)."""
    # Lease times come from the database clock, so web and worker machines whose clocks
    # disagree still agree on who holds a lease.
    return {
        "state": ThreadState.RUNNING,
        "lease_owner": worker_id,
        "lease_expires_at": Now() + duration,
        "claim_count": F("claim_count") + 1,
        "started_at": Coalesce(F("started_at"), Now()),
        "claimed_at": Now(),
        "updated_at": Now(),
    }


def thread_claim(
    *, user_id: str, thread_id: uuid.UUID, worker_id: str, lease_seconds: int | None = None
) -> Thread:
    """Take the thread's lease (compare-and-set; one of racing claimers wins, others get 409).

    Claimable: created, waiting, suspended, or running with an expired lease or the same owner.
    """
    check_worker_id(worker_id)
    duration = lease_duration(lease_seconds)
    claimable = (
        Q(state__in=[ThreadState.CREATED, ThreadState.WAITING, ThreadState.SUSPENDED])
        | Q(state=ThreadState.RUNNING, lease_expires_at__lt=Now())
        | Q(state=ThreadState.RUNNING, lease_owner=worker_id)
    )
    # One statement, no transaction block: the compare-and-set returns the row it wrote, and the
    # lock timeout it sets lasts for the statement's own transaction.
    with lock_waits_bounded(busy=ThreadBusy):
        claimed = update_returning(
            Thread.objects.filter(
                lock_bound(), claimable, pk=thread_id, user_id=user_id, cancel_requested=False
            ),
            **_lease_taken(worker_id, duration),
        )
    if claimed:
        _log_claim(claimed[0])
        return claimed[0]
    thread = selectors.thread_get(user_id=user_id, thread_id=thread_id)
    raise ThreadNotClaimable(
        f"The thread is {thread.state}"
        + (", cancelled" if thread.cancel_requested else "")
        + (f", leased by {thread.lease_owner!r}" if thread.lease_owner else "")
        + "; it cannot be claimed.",
        details={"state": thread.state, "cancel_requested": thread.cancel_requested},
    )


def thread_lease_renew(
    *,
    user_id: str,
    thread_id: uuid.UUID,
    worker_id: str,
    lease_seconds: int | None = None,
    usage: ThreadUsage | None = None,
) -> Thread:
    """Extend the lease (compare-and-set on the holder), adding ``usage`` (the increase since the
    last report) to the thread's counters. The result shows ``cancel_requested``, which is how a
    running engine learns it was interrupted."""
    check_worker_id(worker_id)
    duration = lease_duration(lease_seconds)
    if usage is not None:
        check_usage(usage)
    # Owner and state are the whole check: the sweeper and other claimers change both, so a
    # match means nobody took the thread over, even if the lease lapsed a moment ago.
    # Bounded like claim (one statement that sets its own lock timeout): the UPDATE waits for the
    # thread row while an outcome, inbox take or interrupt holds it, and that wait must be
    # bounded too.
    with lock_waits_bounded(busy=ThreadBusy):
        renewed = update_returning(
            Thread.objects.filter(
                lock_bound(),
                pk=thread_id,
                user_id=user_id,
                state=ThreadState.RUNNING,
                lease_owner=worker_id,
            ),
            lease_expires_at=Now() + duration,
            updated_at=Now(),
            **(_usage_increments(usage) if usage is not None else {}),
        )
    if renewed:
        return renewed[0]
    thread = selectors.thread_get(user_id=user_id, thread_id=thread_id)
    raise LeaseNotHeld(details={"state": thread.state})


def thread_inbox_take(
    *, user_id: str, thread_id: uuid.UUID, worker_id: str
) -> list[ConversationEntry]:
    """Return the thread's undelivered user messages in seq order and mark them delivered.

    Locks the thread row (then its entries), so two takes never return the same message.
    """
    check_worker_id(worker_id)
    with locked_transaction(busy=ThreadBusy):
        thread = selectors.thread_get_for_update(user_id=user_id, thread_id=thread_id)
        if thread.state != ThreadState.RUNNING or thread.lease_owner != worker_id:
            raise LeaseNotHeld(details={"state": thread.state})
        return _inbox_take_locked(thread)


def _inbox_take_locked(thread: Thread) -> list[ConversationEntry]:
    """Mark the locked thread's undelivered user messages delivered and return them."""
    # One UPDATE ... RETURNING: it locks each entry it marks, and a racing take that waited for
    # one re-checks "undelivered" and skips it, so no message is returned twice.
    entries = update_returning(
        ConversationEntry.objects.undelivered_for(thread), delivered_at=timezone.now()
    )
    return sorted(entries, key=lambda entry: entry.seq)


def thread_claim_next(
    *, user_id: str | None, worker_id: str, lease_seconds: int | None = None
) -> ClaimedThread | None:
    """Claim the oldest thread waiting for an engine (of ``user_id``, or of any tenant when it is
    None) and take its inbox, in one transaction; None when there is none.

    Waiting for an engine: ``created`` (new, or requeued by the sweeper), or paused (waiting,
    suspended) with a message for it. ``SKIP LOCKED``: racing engines each get a different thread
    and never queue behind one another's claim.
    """
    check_worker_id(worker_id)
    duration = lease_duration(lease_seconds)
    tenant = Q(user_id=user_id) if user_id is not None else Q()
    with locked_transaction(busy=ThreadBusy, bound_by_first_statement=True):
        candidates = Thread.objects.for_update(skip_locked=True).filter(
            tenant, cancel_requested=False
        )
        # Two statements at most, not one OR: the first is served by the partial index on created
        # threads. Each picks, locks and claims its thread at once (UPDATE ... WHERE pk = the
        # locked candidate ... RETURNING).
        waiting_for_engine = [
            candidates.filter(state=ThreadState.CREATED),
            candidates.filter(
                state__in=[ThreadState.WAITING, ThreadState.SUSPENDED],
                entries__sender=EntrySender.USER,
                entries__delivered_at__isnull=True,
            ),
        ]
        for oldest in waiting_for_engine:
            claimed = update_returning(
                Thread.objects.filter(
                    lock_bound(),
                    pk=Subquery(oldest.order_by("created_at").values("pk")[:1]),
                ),
                **_lease_taken(worker_id, duration),
            )
            if claimed:
                _log_claim(claimed[0])
                return ClaimedThread(thread=claimed[0], inbox=_inbox_take_locked(claimed[0]))
        return None


def _log_claim(thread: Thread) -> None:
    logger.info(
        "thread %s claimed by %s (claim %d)",
        thread.pk,
        thread.lease_owner,
        thread.claim_count,
        extra={
            "thread_id": str(thread.pk),
            "tenant": thread.user_id,
            "worker_id": thread.lease_owner,
            "claim_count": thread.claim_count,
        },
    )


def _usage_increments(usage: ThreadUsage) -> dict[str, Any]:
    """Counter updates for a compare-and-set UPDATE (F() so concurrent reports add up)."""
    return {
        "step_count": F("step_count") + usage.steps,
        "input_tokens": F("input_tokens") + usage.input_tokens,
        "output_tokens": F("output_tokens") + usage.output_tokens,
        "tokens_used": F("tokens_used") + usage.input_tokens + usage.output_tokens,
        "cost_usd": F("cost_usd") + Decimal(str(usage.cost_usd)),
        "model_time_ms": F("model_time_ms") + round(usage.model_ms),
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


def thread_suspend(*, user_id: str, thread_id: uuid.UUID, worker_id: str) -> Thread:
    """The lease holder parks a running thread; the next user message resumes it.

    Locks the conversation, then the thread: a message injected after the engine's last inbox
    read is either committed before (a run is enqueued to take it, so it is not stranded in a
    parked thread) or sees the thread suspended and resumes it.
    """
    check_worker_id(worker_id)
    with locked_transaction(bound_by_first_statement=True):
        _, thread = thread_lock_with_conversation(user_id, thread_id)
        if thread.state != ThreadState.RUNNING or thread.lease_owner != worker_id:
            raise LeaseNotHeld(details={"state": thread.state})
        thread.state = ThreadState.SUSPENDED
        thread.lease_owner = ""
        thread.lease_expires_at = None
        thread.save(update_fields=["state", "lease_owner", "lease_expires_at", "updated_at"])
        if ConversationEntry.objects.undelivered_for(thread).exists():
            thread_run_enqueue(thread.id)
    return thread


def _outcome_entry_text(outcome: ThreadOutcome) -> tuple[EntrySender, str] | None:
    if outcome.kind == "completed":
        return (EntrySender.AGENT, outcome.response) if outcome.response else None
    if outcome.kind == "stopped":
        return EntrySender.SYSTEM, "Thread stopped"
    if outcome.kind == "max_iterations":
        return EntrySender.SYSTEM, "Thread reached max iterations"
    if outcome.kind == "failed":
        return EntrySender.SYSTEM, f"Thread failed: {outcome.error}"
    return (
        EntrySender.SYSTEM,
        f"Gate '{outcome.gate_name}' paused execution of action: {outcome.gate_action}",
    )


def thread_outcome_record(
    *,
    user_id: str,
    thread_id: uuid.UUID,
    outcome: ThreadOutcome,
    worker_id: str | None = None,
    usage: ThreadUsage | None = None,
) -> OutcomeResult:
    """Record how a thread's run ended (and what the run cost) and write the conversation
    entries that say so.

    Locks the conversation, then the thread. Undelivered messages for the thread (sent after its
    last inbox read) and queued messages become a follow-up thread in the same transaction.
    """
    check_outcome(outcome)
    if usage is not None:
        check_usage(usage)
    with locked_transaction(bound_by_first_statement=True):
        conversation, thread = thread_lock_with_conversation(user_id, thread_id)
        _check_outcome_allowed(thread, outcome, worker_id)
        # Counted and logged once the outcome is durable, whichever return below ends it.
        transaction.on_commit(partial(_outcome_observe, thread))
        if usage is not None:
            _usage_add(thread, usage)
        now = timezone.now()
        recorded = {**outcome.as_json(), "recorded_at": now.isoformat(), "worker_id": worker_id}
        thread.lease_owner = ""
        thread.lease_expires_at = None

        if thread.cancel_requested and not thread.tracked:
            # Interrupted or cleared: the conversation has moved on; the run only ends here.
            thread.state = ThreadState.STOPPED
            thread.outcome = {**recorded, "kind": "stopped", "reported_kind": outcome.kind}
            thread.finished_at = now
            thread.save()
            return OutcomeResult(thread=thread, entries=[])

        was_tracked = thread.tracked
        thread.state = _OUTCOME_STATE[outcome.kind]
        thread.outcome = recorded
        if outcome.kind != "gate_paused":
            thread.tracked = False
            thread.finished_at = now
        # Saved before any follow-up is inserted: the one-tracked-thread index checks each row.
        thread.save()
        if conversation is None:
            return OutcomeResult(thread=thread, entries=[])

        writer = EntryWriter(conversation)
        text = _outcome_entry_text(outcome)
        if text is not None:
            writer.add(text[0], text[1], thread=thread)

        follow_up = None
        spawns = was_tracked and thread.kind == ThreadKind.FOREGROUND
        undelivered, queued = _unread_messages(
            thread, conversation if outcome.kind != "gate_paused" and spawns else None
        )
        if outcome.kind == "gate_paused":
            if undelivered:
                # Messages wait in the paused thread's inbox; a run must pick them up.
                thread_run_enqueue(thread.id)
        elif spawns:
            carried = sorted(undelivered + queued, key=lambda entry: entry.seq)
            if carried:
                follow_up, _ = thread_spawn(conversation, writer, carried=carried)
        entries = writer.flush()
    return OutcomeResult(thread=thread, entries=entries, follow_up=follow_up)


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


def _unread_messages(
    thread: Thread, conversation: Conversation | None
) -> tuple[list[ConversationEntry], list[ConversationEntry]]:
    """The thread's undelivered messages and, with ``conversation``, the messages queued in it
    (one statement: each half is served by its own partial index)."""
    unread = ConversationEntry.objects.undelivered_for(thread)
    if conversation is not None:
        unread = unread.union(conversation.entries.queued(), all=True)
    entries = sorted(unread, key=lambda entry: entry.seq)
    undelivered = [entry for entry in entries if entry.thread_id == thread.id]
    queued = [entry for entry in entries if entry.thread_id is None]
    return undelivered, queued


def _check_outcome_allowed(thread: Thread, outcome: ThreadOutcome, worker_id: str | None) -> None:
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


def thread_leases_sweep(
    *, now: datetime.datetime | None = None, batch_size: int = 100
) -> SweepResult:
    """Return running threads whose lease expired to ``created`` and enqueue them again.

    A thread that was asked to stop is stopped instead. One transaction per batch; rows locked by
    a live transaction (a heartbeat, an outcome) are skipped and seen by the next sweep.
    """
    expired_before = now or Now()
    result = SweepResult()
    while True:
        with transaction.atomic():
            expired = list(
                Thread.objects.for_update(skip_locked=True)
                .filter(state=ThreadState.RUNNING, lease_expires_at__lt=expired_before)
                .order_by("pk")
                .values_list("pk", "cancel_requested", "user_id")[:batch_size]
            )
            requeue = [pk for pk, cancelled, _ in expired if not cancelled]
            stop = [pk for pk, cancelled, _ in expired if cancelled]
            if requeue:
                Thread.objects.filter(pk__in=requeue).update(
                    state=ThreadState.CREATED,
                    lease_owner="",
                    lease_expires_at=None,
                    enqueued_at=Now(),
                    updated_at=Now(),
                )
                for pk in requeue:
                    thread_run_enqueue(pk)
            if stop:
                Thread.objects.filter(pk__in=stop).update(
                    state=ThreadState.STOPPED,
                    lease_owner="",
                    lease_expires_at=None,
                    outcome={"kind": "stopped", "reason": "lease expired after cancellation"},
                    finished_at=Now(),
                    updated_at=Now(),
                )
        for pk, cancelled, tenant in expired:
            logger.warning(
                "lease of thread %s expired: %s",
                pk,
                "stopped (it was cancelled)" if cancelled else "back to created",
                extra={"thread_id": str(pk), "tenant": tenant, "lease_expired": True},
            )
        result.requeued.extend(requeue)
        result.stopped.extend(stop)
        if len(expired) < batch_size:
            return result


OPERATOR_STOP_REASON = "stopped by an operator"


def thread_stop(
    *, user_id: str, thread_id: uuid.UUID, reason: str = OPERATOR_STOP_REASON
) -> OperatorActionResult:
    """Stop a live thread now, whoever runs it: stopped, lease cleared, untracked with a system
    entry, and its unread messages carried to a follow-up thread as any outcome does.

    Locks the conversation, then the thread, as outcomes do: a worker's outcome racing with it
    either commits first (the thread is terminal: skipped) or finds it stopped (409).
    """
    with locked_transaction(bound_by_first_statement=True):
        conversation, thread = thread_lock_with_conversation(user_id, thread_id)
        if thread.is_terminal:
            return OperatorActionResult(thread.id, False, f"already {thread.state}")
        return _thread_stop_locked(conversation, thread, reason)


def _thread_stop_locked(
    conversation: Conversation | None, thread: Thread, reason: str
) -> OperatorActionResult:
    was_state, was_tracked, lease_owner = thread.state, thread.tracked, thread.lease_owner
    now = timezone.now()
    thread.state = ThreadState.STOPPED
    thread.lease_owner = ""
    thread.lease_expires_at = None
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
            undelivered, queued = _unread_messages(thread, conversation)
            carried = sorted(undelivered + queued, key=lambda entry: entry.seq)
            if carried:
                follow_up, _ = thread_spawn(conversation, writer, carried=carried)
                done.append(f"{len(carried)} unread message(s) moved to thread {follow_up.id}")
        writer.flush()
    return OperatorActionResult(thread.id, True, ", ".join(done) + ")")


def thread_request_cancel(*, user_id: str, thread_id: uuid.UUID) -> OperatorActionResult:
    """Ask a running thread's engine to stop: it sees ``cancel_requested`` at its next heartbeat
    and records "stopped" (or the lease sweeper stops it once its lease runs out).

    A live thread nobody runs is stopped at once (no engine would ever see the request: a
    cancelled thread cannot be claimed). Locks the conversation, then the thread.
    """
    with locked_transaction(bound_by_first_statement=True):
        conversation, thread = thread_lock_with_conversation(user_id, thread_id)
        if thread.is_terminal:
            return OperatorActionResult(thread.id, False, f"already {thread.state}")
        if thread.state != ThreadState.RUNNING:
            return _thread_stop_locked(conversation, thread, "cancelled by an operator")
        if thread.cancel_requested:
            return OperatorActionResult(thread.id, False, "cancellation already requested")
        thread.cancel_requested = True
        thread.save(update_fields=["cancel_requested", "updated_at"])
    return OperatorActionResult(
        thread.id, True, f"cancellation requested from {thread.lease_owner or 'its engine'}"
    )


def thread_requeue(*, user_id: str, thread_id: uuid.UUID) -> OperatorActionResult:
    """Give a thread stuck without a run a new one: a created thread's run job is deferred again
    (unless one is waiting); a running thread whose lease expired goes back to created first, as
    the lease sweeper would do.

    Locks the thread row only (a thread-only operation, like the sweeper); the job is deferred in
    the same transaction.
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
        if thread.cancel_requested:
            return OperatorActionResult(
                thread.id, False, "cancellation requested: a run would be refused; stop it"
            )
        requeued_from = ""
        if thread.state == ThreadState.RUNNING:
            if not getattr(thread, "lease_expired", False):
                return OperatorActionResult(
                    thread.id, False, f"running with a live lease held by {thread.lease_owner}"
                )
            thread.state = ThreadState.CREATED
            thread.lease_owner = ""
            thread.lease_expires_at = None
            thread.enqueued_at = timezone.now()
            thread.save(
                update_fields=[
                    "state",
                    "lease_owner",
                    "lease_expires_at",
                    "enqueued_at",
                    "updated_at",
                ]
            )
            requeued_from = "back to created (its lease had expired), "
        elif thread.state != ThreadState.CREATED:
            return OperatorActionResult(thread.id, False, f"{thread.state}: nothing to requeue")
        if not thread_run_enqueue(thread.id):
            return OperatorActionResult(
                thread.id, bool(requeued_from), requeued_from + "a run job was already waiting"
            )
    return OperatorActionResult(thread.id, True, requeued_from + "run job deferred")
