"""The threads queue is the thread rows themselves: no job rows beside them.

A thread waits for a worker while it is ``created`` (spawned, or requeued by the sweeper or an
operator) or paused (``waiting``, ``suspended``) with a user message it has not taken. Turn
workers take the one waiting longest with ``SKIP LOCKED`` (``thread_claim_runnable``), external
engines with ``POST /api/v1/threads/next`` (``thread_claim_next``): one queue, so a claim is the
only hand-off and the two can never disagree about what may run.

Both are woken by ``NOTIFY ironclaw_threads`` (payload: the tenant), sent at commit: by a trigger
when a thread becomes ``created``, and by ``thread_runnable_notify`` when a paused thread gets a
message.
"""

from __future__ import annotations

import os
import socket
import uuid

from django.db import connection

from conversations.models import Thread
from core.notify import THREADS_CHANNEL

# The queue's name where workers and metrics list queues (manage.py worker --queue threads).
THREADS_QUEUE = "threads"


def thread_runnable_notify(thread: Thread) -> None:
    """Wake the workers and engines waiting for threads: ``thread`` (paused) has a message for
    it. Sent when the caller's transaction commits, never before its rows are visible."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [THREADS_CHANNEL, thread.user_id])


# The lease owner of a registered turn worker's turn:
# "turn-worker:<its procrastinate_workers id>:<host>:<pid>:<turn>". The lease sweep reads it back
# (thread_leases_sweep): the id finds the worker's heartbeat, the host and pid the process that
# serve saw die. External engines may not claim under it, so the sweep never takes their leases
# for a dead turn worker's.
TURN_WORKER_OWNER_PREFIX = "turn-worker:"
TURN_WORKER_OWNER_PATTERN = r"^turn-worker:[0-9]{1,18}:[^:]+:[0-9]{1,10}:[0-9a-f]{8}$"


def lease_owner_host() -> str:
    """This host's name as lease owners carry it (a colon would split the owner wrongly)."""
    return socket.gethostname().replace(":", "-")


def lease_owner_id(*, worker_row: int | None = None) -> str:
    """A lease owner naming this host and process, unique per turn: what turn workers claim as.
    ``worker_row``: the turn worker's ``procrastinate_workers`` id, so a sweep can tell when it
    is dead."""
    turn = f"{lease_owner_host()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    if worker_row is None:
        return turn
    return f"{TURN_WORKER_OWNER_PREFIX}{worker_row}:{turn}"
