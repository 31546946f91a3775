"""The engine's side of a thread's life, under a lease: claim (one thread, or the oldest waiting),
lease renewal (the heartbeat), inbox, suspend, and the lease's epoch that fences a writer's
writes. The sweep of leases nobody holds any more is ``lease_sweep``; how a run ends is recorded
by ``outcome``."""

from __future__ import annotations

import datetime
import logging
import uuid
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import F
from django.db.models.functions import Coalesce, Now
from django.utils import timezone

from conversations import event_sql, selectors
from conversations.errors import LeaseLost, LeaseNotHeld, ThreadBusy, ThreadNotClaimable
from conversations.models import ConversationEntry, EntrySender, Thread, ThreadState
from conversations.services.lifecycle import lease_released_fields, thread_lease_release
from conversations.services.locking import (
    lock_bound,
    lock_bound_value,
    locked_transaction,
    thread_lock_with_conversation,
)
from conversations.services.operator_actions import thread_stop
from conversations.services.turn_queue import thread_runnable_notify
from conversations.services.validation import (
    check_engine_worker_id,
    check_usage,
    check_worker_id,
    lease_duration,
)
from conversations.services.values import ClaimedThread, ThreadUsage
from core.db import (
    LOCK_TIMEOUT_BOUND_SQL,
    ModelRows,
    lock_waits_bounded,
    server_bound_cursor,
    update_returning,
)
from core.log_context import log_context

logger = logging.getLogger(__name__)

# A write's fence on the lease epoch (workspace.WriteFence's SQL, for the engine's checkpoints):
# a row while nobody has claimed the thread since the writer did. FOR SHARE makes a takeover's
# claim wait for a write in flight, and a write after the takeover find no row.
LEASE_FENCE_SQL = (
    "SELECT 1 FROM conversations_thread"
    " WHERE id = %(fence_thread_id)s AND user_id = %(fence_user_id)s"
    " AND claim_count = %(fence_lease_epoch)s FOR SHARE"
)


# The same fence for a step's checkpoint, which is also the thread's "step" event: the fence
# takes the event's number from the thread row (locking it, as FOR SHARE would) and the effect
# records the event (ThreadEvent; its trigger notifies the streams). Still one statement. Only
# while the thread runs: a stop (an operator's, the sweeper's) or a requeue takes no new claim,
# and a step its worker checkpoints afterwards would be an event after the thread's final one.
# fence_unfollowed ('on' or 'off') sets event_sql.UNFOLLOWED_SETTING for the statement's own
# transaction: 'on' records the event without notifying (nobody follows the tenant live).
STEP_FENCE_SQL = (
    "UPDATE conversations_thread SET event_seq = event_seq + 1"
    " WHERE id = %(fence_thread_id)s AND user_id = %(fence_user_id)s"
    " AND claim_count = %(fence_lease_epoch)s"
    f" AND state = '{ThreadState.RUNNING}'"
    f" AND set_config('{event_sql.UNFOLLOWED_SETTING}', %(fence_unfollowed)s, true) IS NOT NULL"
    " RETURNING id, user_id, conversation_id, event_seq"
)
STEP_EVENT_SQL = (
    "INSERT INTO conversations_threadevent"
    " (user_id, thread_id, conversation_id, seq, kind, data, created_at)"
    " SELECT user_id, id, conversation_id, event_seq, 'step', %(fence_step)s, clock_timestamp()"
    " FROM fence"
)


def lease_fence_params(
    thread_id: uuid.UUID | str, lease_epoch: int, *, user_id: str
) -> dict[str, Any]:
    return {
        "fence_thread_id": thread_id,
        "fence_user_id": user_id,
        "fence_lease_epoch": lease_epoch,
    }


def lease_check(thread: Thread, worker_id: str | None, lease_epoch: int | None) -> None:
    """Raise unless ``worker_id`` holds the running thread's lease, and, when the writer names
    the ``lease_epoch`` it claimed (the thread's ``claim_count`` then), unless nobody has
    claimed the thread since: a worker whose lease lapsed and was taken over is refused with
    ``lease_lost`` even when it reuses its worker id."""
    held = thread.state == ThreadState.RUNNING and thread.lease_owner == worker_id
    if lease_epoch is None:
        if not held:
            raise LeaseNotHeld(details={"state": thread.state})
        return
    if not held or thread.claim_count != lease_epoch:
        raise LeaseLost(details={"state": thread.state, "lease_epoch": thread.claim_count})


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


_THREAD_ROWS = ModelRows(Thread)
# _lease_taken in SQL, for the claims written once (parameters: the owner, the duration).
_LEASE_TAKEN_SQL = f"""UPDATE conversations_thread AS t SET
    state = '{ThreadState.RUNNING}',
    lease_owner = %s,
    lease_expires_at = STATEMENT_TIMESTAMP() + %s,
    claim_count = t.claim_count + 1,
    started_at = COALESCE(t.started_at, STATEMENT_TIMESTAMP()),
    claimed_at = STATEMENT_TIMESTAMP(),
    updated_at = STATEMENT_TIMESTAMP()
"""
# thread_claim's compare-and-set, written once: the ORM spent more CPU building it than
# PostgreSQL spends running it. The same update as _lease_taken, on the same claimable states.
_CLAIM_SQL = f"""
{_LEASE_TAKEN_SQL}WHERE {LOCK_TIMEOUT_BOUND_SQL}
  AND t.id = %s AND t.user_id = %s AND NOT t.cancel_requested
  AND (
    t.state = '{ThreadState.CREATED}'
    OR (t.state IN ('{ThreadState.WAITING}', '{ThreadState.SUSPENDED}')
        AND (NOT %s OR EXISTS (
            SELECT 1 FROM conversations_conversationentry e
            WHERE e.thread_id = t.id AND e.user_id = t.user_id
              AND e.sender = '{EntrySender.USER}' AND e.delivered_at IS NULL)))
    OR (t.state = '{ThreadState.RUNNING}'
        AND (t.lease_expires_at < STATEMENT_TIMESTAMP() OR t.lease_owner = %s))
  )
RETURNING {_THREAD_ROWS.columns("t")}
"""


# thread_claim_runnable: whichever has waited longer, the oldest created thread (waiting since
# its spawn or requeue) or the paused one whose oldest unread message came first, so a message
# to a paused thread is never starved by a stream of new threads. Each pick is LIMIT 1 with SKIP
# LOCKED: racing workers each get another thread and never wait for one another (the pick that
# loses is unlocked when the statement ends). The created pick is one probe of
# thread_claimable_idx; the paused one walks the waiting and suspended threads
# (thread_live_state_idx), one probe of entry_undelivered_by_thread each. The outer state check
# re-reads the row the pick locked, as a compare-and-set; the statement also sets the lock bound
# of its transaction (thread_claim_next takes the inbox next in the same one).
_CLAIM_RUNNABLE_SQL = f"""
WITH created AS (
    SELECT c.id, COALESCE(c.enqueued_at, c.created_at) AS since FROM conversations_thread c
    WHERE c.state = '{ThreadState.CREATED}' AND NOT c.cancel_requested{{tenant_c}}
    ORDER BY c.created_at LIMIT 1 FOR UPDATE SKIP LOCKED
), paused AS (
    SELECT c.id, (
        SELECT min(e.created_at) FROM conversations_conversationentry e
        WHERE e.thread_id = c.id AND e.user_id = c.user_id
          AND e.sender = '{EntrySender.USER}' AND e.delivered_at IS NULL
    ) AS since
    FROM conversations_thread c
    WHERE c.state IN ('{ThreadState.WAITING}', '{ThreadState.SUSPENDED}')
      AND NOT c.cancel_requested{{tenant_c}}
      AND EXISTS (
          SELECT 1 FROM conversations_conversationentry e
          WHERE e.thread_id = c.id AND e.user_id = c.user_id AND e.sender = '{EntrySender.USER}'
            AND e.delivered_at IS NULL)
    ORDER BY since LIMIT 1 FOR UPDATE OF c SKIP LOCKED
)
{_LEASE_TAKEN_SQL}FROM (
    SELECT id FROM (SELECT * FROM created UNION ALL SELECT * FROM paused) AS candidate
    ORDER BY since LIMIT 1
) AS pick
WHERE t.id = pick.id AND {LOCK_TIMEOUT_BOUND_SQL}
  AND t.state IN ('{ThreadState.CREATED}', '{ThreadState.WAITING}', '{ThreadState.SUSPENDED}')
  AND NOT t.cancel_requested{{tenant_t}}
RETURNING {_THREAD_ROWS.columns("t")}
"""
# An engine's claim for one tenant: each pick and the update name it (one shard on Citus).
_CLAIM_RUNNABLE_OF_TENANT_SQL = _CLAIM_RUNNABLE_SQL.format(
    tenant_c=" AND c.user_id = %s", tenant_t=" AND t.user_id = %s"
)
# The turn workers' claim, and an engine's across tenants (threads/next without X-User-Id): the
# queue of every tenant, a multi-shard statement on Citus (docs/citus.md).
CLAIM_RUNNABLE_ANY_TENANT_SQL = _CLAIM_RUNNABLE_SQL.format(tenant_c="", tenant_t="")


def thread_claim_runnable(
    *, worker_id: str, lease_seconds: int | None = None, user_id: str | None = None
) -> Thread | None:
    """Claim the runnable thread (of ``user_id``, or of any tenant when it is None) that has
    waited longest, without taking its inbox; None when no thread waits. Runnable: created, or
    paused (waiting, suspended) with a message for it, and not asked to stop. One statement, no
    lock waits.

    Turn workers call it alone (the runner takes the inbox in the transaction that checkpoints
    what it took); ``thread_claim_next`` takes the inbox with it, for external engines."""
    check_worker_id(worker_id)
    duration = lease_duration(lease_seconds)
    with transaction.mark_for_rollback_on_error(), server_bound_cursor() as cursor:
        # The bound lasts for the statement's transaction: the caller's, or its own.
        params: list[Any] = [worker_id, duration, lock_bound_value()]
        if user_id is None:
            cursor.execute(CLAIM_RUNNABLE_ANY_TENANT_SQL, params)
        else:
            cursor.execute(_CLAIM_RUNNABLE_OF_TENANT_SQL, [user_id, user_id, *params, user_id])
        claimed = [_THREAD_ROWS.instance(row) for row in cursor.fetchall()]
    if not claimed:
        return None
    thread = claimed[0]
    # Logged as the request that spawned the thread (a worker is in no request of its own).
    with log_context(request_id=thread.metadata.get("request_id"), tenant=thread.user_id):
        _log_claim(thread)
    return thread


def thread_claim(
    *,
    user_id: str,
    thread_id: uuid.UUID,
    worker_id: str,
    lease_seconds: int | None = None,
    runnable_only: bool = False,
) -> Thread:
    """Take the thread's lease (compare-and-set; one of racing claimers wins, others get 409).

    Claimable: created, waiting, suspended, or running with an expired lease or the same owner.
    ``runnable_only`` (the built-in runner's queued runs): a waiting or suspended thread only with
    a message for it, as ``thread_claim_next`` picks them; a run queued earlier must not take up a
    thread that an engine paused meanwhile and nobody has spoken to since.
    """
    check_engine_worker_id(worker_id)
    duration = lease_duration(lease_seconds)
    params: list[Any] = [
        worker_id,
        duration,
        lock_bound_value(),
        thread_id,
        user_id,
        runnable_only,
        worker_id,
    ]
    # One statement, no transaction block: the compare-and-set returns the row it wrote, and the
    # lock timeout it sets lasts for the statement's own transaction.
    with (
        lock_waits_bounded(busy=ThreadBusy),
        transaction.mark_for_rollback_on_error(),
        server_bound_cursor() as cursor,
    ):
        cursor.execute(_CLAIM_SQL, params)
        claimed = [_THREAD_ROWS.instance(row) for row in cursor.fetchall()]
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
    lease_epoch: int | None = None,
) -> Thread:
    """Extend the lease (compare-and-set on the holder and, when given, its epoch), adding
    ``usage`` (the increase since the last report) to the thread's counters. The result shows
    ``cancel_requested``, which is how a running engine learns it was interrupted."""
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
                **({} if lease_epoch is None else {"claim_count": lease_epoch}),
            ),
            lease_expires_at=Now() + duration,
            updated_at=Now(),
            **(_usage_increments(usage) if usage is not None else {}),
        )
    if renewed:
        return renewed[0]
    thread = selectors.thread_get(user_id=user_id, thread_id=thread_id)
    lease_check(thread, worker_id, lease_epoch)
    raise LeaseNotHeld(details={"state": thread.state})  # held again by now: a lapse between


def thread_lease_give_up(
    *, user_id: str, thread_id: uuid.UUID, worker_id: str, lease_epoch: int
) -> bool:
    """The lease holder hands its running thread back to the queue unfinished (``created``): its
    worker is stopping, and the next claim resumes the turn from its checkpoint. A compare-and-set
    on the holder and its epoch, one statement; False when the lease is not held any more (the
    turn ended, or was taken over). A thread asked to stop meanwhile is stopped instead, as the
    lease sweep would.

    The caller must write nothing for the thread afterwards: the epoch (``claim_count``) changes
    only at the next claim, so until then a fenced write of the old epoch would still pass."""
    check_worker_id(worker_id)
    with lock_waits_bounded(busy=ThreadBusy):
        # Bounded like a renewal: the update waits for the row while an inbox take holds it.
        given_up = Thread.objects.filter(
            lock_bound(),
            pk=thread_id,
            user_id=user_id,
            state=ThreadState.RUNNING,
            lease_owner=worker_id,
            claim_count=lease_epoch,
            cancel_requested=False,
        ).update(
            **lease_released_fields(ThreadState.CREATED),
            enqueued_at=Now(),
            updated_at=Now(),
        )
    if given_up:
        # Back to created: the update's trigger wakes the workers at commit.
        logger.info(
            "thread %s given back to the queue by %s, which is stopping",
            thread_id,
            worker_id,
            extra={"thread_id": str(thread_id), "tenant": user_id, "worker_id": worker_id},
        )
        return True
    thread = Thread.objects.filter(pk=thread_id, user_id=user_id).first()
    if (
        thread is None
        or not thread.cancel_requested
        or thread.state != ThreadState.RUNNING
        or (thread.lease_owner, thread.claim_count) != (worker_id, lease_epoch)
    ):
        return False
    # Asked to stop: back in the queue it would wait for ever (a cancelled thread is not runnable).
    return thread_stop(
        user_id=user_id, thread_id=thread_id, reason="its worker stopped after cancellation"
    ).done


def thread_inbox_take(
    *, user_id: str, thread_id: uuid.UUID, worker_id: str, lease_epoch: int | None = None
) -> list[ConversationEntry]:
    """Return the thread's undelivered user messages in seq order and mark them delivered.

    Locks the thread row (then its entries), so two takes never return the same message.
    """
    check_worker_id(worker_id)
    with locked_transaction(busy=ThreadBusy):
        thread = selectors.thread_get_for_update(user_id=user_id, thread_id=thread_id)
        lease_check(thread, worker_id, lease_epoch)
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
    """Claim the thread waiting longest for an engine (of ``user_id``, or of any tenant when it
    is None) and take its inbox, in one transaction; None when there is none.

    The same claim as the turn workers' (``thread_claim_runnable``): ``SKIP LOCKED``, so racing
    engines each get a different thread and never queue behind one another's claim.
    """
    check_engine_worker_id(worker_id)
    with locked_transaction(busy=ThreadBusy, bound_by_first_statement=True):
        claimed = thread_claim_runnable(
            worker_id=worker_id, lease_seconds=lease_seconds, user_id=user_id
        )
        if claimed is None:
            return None
        return ClaimedThread(thread=claimed, inbox=_inbox_take_locked(claimed))


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


def thread_suspend(
    *, user_id: str, thread_id: uuid.UUID, worker_id: str, lease_epoch: int | None = None
) -> Thread:
    """The lease holder parks a running thread; the next user message resumes it.

    Locks the conversation, then the thread: a message injected after the engine's last inbox
    read is either committed before (the suspended thread is runnable with it, so it is not
    stranded in a parked thread) or sees the thread suspended and resumes it.
    """
    check_worker_id(worker_id)
    with locked_transaction(bound_by_first_statement=True):
        _, thread = thread_lock_with_conversation(user_id, thread_id)
        lease_check(thread, worker_id, lease_epoch)
        released = thread_lease_release(thread, state=ThreadState.SUSPENDED)
        thread.save(update_fields=[*released, "updated_at"])
        if ConversationEntry.objects.undelivered_for(thread).exists():
            thread_runnable_notify(thread)
    return thread
