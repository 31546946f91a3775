"""Every write of the conversations app, named ``<noun>_<verb>``, one module per concern.

- ``conversations``: ``conversation_get_or_create``, ``conversation_start_new``,
  ``conversation_busy_policy_set``, ``conversation_clear``;
- ``messages``: ``message_handle`` (spawn a thread, inject into, resume or queue behind one);
- ``lease``, the engine's side: ``thread_claim``, ``thread_claim_next`` (external engines),
  ``thread_claim_runnable`` (turn workers), ``thread_lease_renew``, ``thread_inbox_take``,
  ``thread_suspend``, ``thread_lease_give_up`` (a stopping worker hands its turn back);
- ``lease_sweep``: ``thread_leases_sweep``, which gives back the leases nobody holds any more;
- ``outcome``: ``thread_outcome_record``, how a run ended;
- ``operator_actions``: ``thread_request_cancel``, ``thread_stop``, ``thread_requeue``;
- ``lifecycle``: what those share, spawning a thread (and the follow-up that takes an ended
  thread's unread and queued messages), cancelling one, giving a lease up.
Underneath: ``locking`` (the bounded transaction and row locks), ``entry_writer`` (seqs and
entries), ``turn_queue`` (the thread rows as the queue of turns), ``validation`` and ``values``
(what services take and return). Reads are in ``conversations.selectors``
(``conversation_list``, ``conversation_get``, ...).

Locking policy (parents before children, one short transaction per call, nothing slow inside;
claim and heartbeat are one statement, their own transaction):
1. the conversation row, ``FOR NO KEY UPDATE`` (plain ``FOR UPDATE`` would also block the
   foreign-key ``KEY SHARE`` locks that inserting entries and threads takes);
2. then thread rows, ``FOR NO KEY UPDATE``;
3. then entry rows (updated or deleted).
Thread-only operations (claim, heartbeat, inbox, sweeper) start at step 2 and never wait for a
conversation, so no cycle exists. Every wait is bounded by ``SET LOCAL lock_timeout`` from
``CONVERSATION_LOCK_TIMEOUT_MS``, set inside the first statement that can wait (hot paths) or
by its own statement; exceeding it is ``ConversationBusy`` (``ThreadBusy`` for
claim, heartbeat and inbox, which wait only for the thread row), HTTP 409.
"""

from conversations.services.conversations import (
    conversation_busy_policy_set,
    conversation_clear,
    conversation_get_or_create,
    conversation_start_new,
)
from conversations.services.lease import (
    LEASE_FENCE_SQL,
    STEP_EVENT_SQL,
    STEP_FENCE_SQL,
    lease_check,
    lease_fence_params,
    thread_claim,
    thread_claim_next,
    thread_claim_runnable,
    thread_inbox_take,
    thread_lease_give_up,
    thread_lease_renew,
    thread_suspend,
)
from conversations.services.lease_sweep import thread_leases_sweep
from conversations.services.messages import message_handle
from conversations.services.operator_actions import (
    thread_request_cancel,
    thread_requeue,
    thread_stop,
)
from conversations.services.outcome import thread_outcome_record
from conversations.services.turn_queue import (
    THREADS_QUEUE,
    lease_owner_id,
    thread_runnable_notify,
)
from conversations.services.validation import (
    CHANNEL_PATTERN,
    MAX_SCOPE_LENGTH,
    MAX_WORKER_ID_LENGTH,
    channel_key,
    outcome_within_limits,
)
from conversations.services.values import (
    OUTCOME_KINDS,
    Action,
    ClaimedThread,
    ClearResult,
    MessageResult,
    OperatorActionResult,
    OutcomeKind,
    OutcomeResult,
    SweepResult,
    ThreadOutcome,
    ThreadUsage,
)

__all__ = [
    "CHANNEL_PATTERN",
    "LEASE_FENCE_SQL",
    "MAX_SCOPE_LENGTH",
    "MAX_WORKER_ID_LENGTH",
    "OUTCOME_KINDS",
    "STEP_EVENT_SQL",
    "STEP_FENCE_SQL",
    "THREADS_QUEUE",
    "Action",
    "ClaimedThread",
    "ClearResult",
    "MessageResult",
    "OperatorActionResult",
    "OutcomeKind",
    "OutcomeResult",
    "SweepResult",
    "ThreadOutcome",
    "ThreadUsage",
    "channel_key",
    "conversation_busy_policy_set",
    "conversation_clear",
    "conversation_get_or_create",
    "conversation_start_new",
    "lease_check",
    "lease_fence_params",
    "lease_owner_id",
    "message_handle",
    "outcome_within_limits",
    "thread_claim",
    "thread_claim_next",
    "thread_claim_runnable",
    "thread_inbox_take",
    "thread_lease_give_up",
    "thread_lease_renew",
    "thread_leases_sweep",
    "thread_outcome_record",
    "thread_request_cancel",
    "thread_requeue",
    "thread_runnable_notify",
    "thread_stop",
    "thread_suspend",
]
