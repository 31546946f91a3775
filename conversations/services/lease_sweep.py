"""The lease sweep: give back the leases nobody holds any more, expired ones and those of turn
workers that are dead, so their threads go back to the queue (or stop, if asked to)."""

from __future__ import annotations

import datetime
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from django.db import connection

from conversations.models import ThreadState
from conversations.services.operator_actions import thread_stop
from conversations.services.turn_queue import TURN_WORKER_OWNER_PATTERN, lease_owner_host
from conversations.services.values import SweepResult
from core.errors import Busy

logger = logging.getLogger(__name__)

# thread_leases_sweep's batch, one statement: pick and lock running threads whose lease nobody
# holds any more, then give each up. SKIP LOCKED: a row a live transaction holds (a heartbeat, an
# outcome) is left to the next sweep, and the sweep never waits. A lease is given up when it
# expired; or when it is a turn worker's (TURN_WORKER_OWNER_PATTERN) and that worker is dead:
# its process is one serve saw die (host and pid), or its heartbeat row is older than dead_after
# (or gone, unregistered or pruned) and the thread itself was not touched for as long, which a
# live turn's lease renewals do every few seconds even while its worker's loop waits out an
# outage. A thread asked to stop is stopped instead of requeued; one its conversation still
# tracks is left out here (stopping it writes an entry and may spawn a follow-up: thread_stop).
_LEASES_SWEEP_SQL = f"""
WITH candidate AS (
    SELECT t.id, t.user_id, t.lease_owner, t.cancel_requested AND t.tracked AS stop_tracked,
        CASE WHEN t.lease_expires_at < STATEMENT_TIMESTAMP() THEN 'expired'
             ELSE 'worker_dead' END AS reason
    FROM conversations_thread t
    WHERE t.state = '{ThreadState.RUNNING}'
      AND (
        t.lease_expires_at < STATEMENT_TIMESTAMP()
        OR (t.lease_owner ~ %(owner_pattern)s AND (
            (split_part(t.lease_owner, ':', 3) = %(host)s
             AND split_part(t.lease_owner, ':', 4) = ANY(%(dead_pids)s::text[]))
            OR (t.updated_at < STATEMENT_TIMESTAMP() - %(dead_after)s::interval
                AND NOT EXISTS (
                    SELECT 1 FROM procrastinate_workers w
                    WHERE w.id = substring(t.lease_owner from '^turn-worker:([0-9]+):')::bigint
                      AND w.last_heartbeat >= STATEMENT_TIMESTAMP() - %(dead_after)s::interval))
        ))
      )
    ORDER BY t.id LIMIT %(batch_size)s
    FOR NO KEY UPDATE SKIP LOCKED
), released AS (
    UPDATE conversations_thread t SET
        state = CASE WHEN t.cancel_requested
            THEN '{ThreadState.STOPPED}' ELSE '{ThreadState.CREATED}' END,
        lease_owner = '',
        lease_expires_at = NULL,
        enqueued_at = CASE WHEN t.cancel_requested
            THEN t.enqueued_at ELSE STATEMENT_TIMESTAMP() END,
        outcome = CASE WHEN t.cancel_requested
            THEN jsonb_build_object('kind', 'stopped', 'reason', CASE c.reason
                WHEN 'expired' THEN 'lease expired after cancellation'
                ELSE 'its turn worker died after cancellation' END)
            ELSE t.outcome END,
        finished_at = CASE WHEN t.cancel_requested
            THEN STATEMENT_TIMESTAMP() ELSE t.finished_at END,
        updated_at = STATEMENT_TIMESTAMP()
    FROM candidate c
    WHERE t.id = c.id AND NOT c.stop_tracked
    RETURNING t.id, t.state
)
SELECT c.id, c.user_id, c.lease_owner, c.reason, released.state
FROM candidate c LEFT JOIN released ON released.id = c.id
ORDER BY c.id
"""


def thread_leases_sweep(
    *,
    dead_after: datetime.timedelta | None = None,
    dead_pids: Sequence[int] = (),
    batch_size: int = 100,
) -> SweepResult:
    """Give back the leases nobody holds any more: return running threads whose lease expired to
    ``created`` (back in the queue: the update's trigger wakes the workers at commit). With
    ``dead_after``, also the turn workers' leases whose worker has not beaten for that long;
    with ``dead_pids``, those of the turn worker processes of this host that are known to be
    dead. External engines' leases only ever expire.

    A thread that was asked to stop is stopped instead. One statement per batch, locking with
    SKIP LOCKED: rows a live transaction holds are seen by the next sweep.
    """
    params: dict[str, Any] = {
        "owner_pattern": TURN_WORKER_OWNER_PATTERN,
        "host": lease_owner_host(),
        "dead_pids": [str(pid) for pid in dead_pids],
        # None: the heartbeat comparisons are NULL, so no lease is given up for a silent worker.
        "dead_after": dead_after,
        "batch_size": batch_size,
    }
    result = SweepResult()
    while True:
        with connection.cursor() as cursor:
            cursor.execute(_LEASES_SWEEP_SQL, params)
            swept = cursor.fetchall()
        progressed = False
        for pk, tenant, owner, reason, state in swept:
            if state is None:
                # Asked to stop by an operator and still tracked: stopped as the operator's stop
                # does it, with its entry, and its unread messages carried to a follow-up.
                if _thread_stop_after_lost_lease(tenant, pk):
                    result.stopped.append(pk)
                    progressed = True
                continue
            progressed = True
            (result.stopped if state == ThreadState.STOPPED else result.requeued).append(pk)
            _log_lease_given_up(pk, tenant, owner, reason, state)
        # A full batch of threads that could not be stopped now would come back unchanged.
        if len(swept) < batch_size or not progressed:
            return result


def _thread_stop_after_lost_lease(tenant: str, thread_id: uuid.UUID) -> bool:
    try:
        stopped = thread_stop(
            user_id=tenant, thread_id=thread_id, reason="lease lost after cancellation"
        )
    except Busy:
        # Its conversation is locked for longer than the bound: the next sweep tries again.
        return False
    logger.warning(
        "lease of thread %s lost after cancellation: %s",
        thread_id,
        stopped.message,
        extra={"thread_id": str(thread_id), "tenant": tenant, "lease_expired": True},
    )
    return stopped.done


def _log_lease_given_up(
    thread_id: uuid.UUID, tenant: str, owner: str, reason: str, state: str
) -> None:
    what = "stopped (it was cancelled)" if state == ThreadState.STOPPED else "back to created"
    if reason == "expired":
        logger.warning(
            "lease of thread %s expired: %s",
            thread_id,
            what,
            extra={"thread_id": str(thread_id), "tenant": tenant, "lease_expired": True},
        )
        return
    logger.warning(
        "lease of thread %s given up, its turn worker is dead (%s): %s",
        thread_id,
        owner,
        what,
        extra={"thread_id": str(thread_id), "tenant": tenant, "worker_dead": True},
    )
