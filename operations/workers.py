"""The worker kinds, declared once: which queues each serves and how many jobs it runs at once.

``serve`` starts one worker of each kind, ``manage.py worker --kind`` runs one in the foreground,
``/readyz`` checks each kind's heartbeat and ``/metrics`` lists every queue. Turns never share a
worker with the other queues, so a burst of indexing never delays a turn.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError

from conversations.services import THREADS_QUEUE


@dataclass(frozen=True)
class WorkerKind:
    name: str
    queues: tuple[str, ...]
    # The setting that sizes it, read when a worker starts (tests override settings).
    concurrency_setting: str

    @property
    def concurrency(self) -> int:
        return int(getattr(settings, self.concurrency_setting))


# Which kind each worker is (operations.models.WorkerName), recorded when it registers: first the
# names of workers Procrastinate has deleted (stopped, or pruned at this worker's start) go.
WORKER_NAME_PRUNE_SQL = (
    "DELETE FROM ironclaw_site_workername name WHERE NOT EXISTS "
    "(SELECT 1 FROM procrastinate_workers worker WHERE worker.id = name.worker_id)"
)
WORKER_NAME_INSERT_SQL = (
    "INSERT INTO ironclaw_site_workername (worker_id, name, registered_at, host, pid) "
    "VALUES (%(worker_id)s, %(name)s, now(), %(host)s, %(pid)s) "
    "ON CONFLICT (worker_id) DO NOTHING"
)


def worker_name_params(*, worker_id: int, name: str) -> dict[str, Any]:
    """WORKER_NAME_INSERT_SQL's parameters for this process: the admin's workers table shows
    where each worker runs."""
    return {"worker_id": worker_id, "name": name, "host": socket.gethostname(), "pid": os.getpid()}


# The turns worker serves the threads queue, which is the thread rows (operations.turn_worker);
# the others are Procrastinate queues.
TURNS = WorkerKind("turns", (THREADS_QUEUE,), "ENGINE_CONCURRENCY")
# Every queue but the turns': indexing, webhook deliveries, and "default" where periodic
# maintenance (the lease sweeper, the stalled-job retry) runs. A new queue must be added here or
# no worker serves it. The background workers also run the routines scheduler.
# Webhook deliveries run there in a pool of their own (job_pools).
WEBHOOKS_QUEUE = "webhooks"
BACKGROUND = WorkerKind(
    "background", ("indexing", WEBHOOKS_QUEUE, "default"), "BACKGROUND_CONCURRENCY"
)
WORKER_KINDS = {kind.name: kind for kind in (TURNS, BACKGROUND)}
ALL_QUEUES = tuple(queue for kind in WORKER_KINDS.values() for queue in kind.queues)


@dataclass(frozen=True)
class WorkerPlan:
    kind: str
    queues: tuple[str, ...]
    concurrency: int


def worker_plan(*, kind: str | None, queues: str | None, concurrency: int | None) -> WorkerPlan:
    """What one production worker serves: a kind's queues and concurrency, or the queues asked
    for (whose kind follows from them). Raises CommandError naming the option at fault."""
    if kind is None and queues is None:
        raise CommandError("Name what to serve: --kind turns|background or --queue QUEUES.")
    if queues is not None:
        asked = tuple(dict.fromkeys(name.strip() for name in queues.split(",") if name.strip()))
        unknown = [name for name in asked if name not in ALL_QUEUES]
        if not asked or unknown:
            raise CommandError(
                f"--queue must be a comma-separated list of {', '.join(ALL_QUEUES)}; "
                f"got {queues!r}."
            )
        # Turns never share a worker with indexing: a burst of indexing would delay them.
        if THREADS_QUEUE in asked and len(asked) > 1:
            raise CommandError(
                f"--queue {queues!r} mixes {THREADS_QUEUE} with other queues; run one worker "
                f"for {THREADS_QUEUE} and another for the rest, so indexing never delays a "
                "turn."
            )
        implied = TURNS.name if asked == TURNS.queues else BACKGROUND.name
        if kind is not None and kind != implied:
            raise CommandError(f"--kind {kind} does not serve --queue {queues!r}.")
        kind = implied
    else:
        assert kind is not None
        asked = WORKER_KINDS[kind].queues
    if concurrency is None:
        only_webhooks = asked == (WEBHOOKS_QUEUE,)
        concurrency = (
            settings.WEBHOOK_CONCURRENCY if only_webhooks else WORKER_KINDS[kind].concurrency
        )
    if not 1 <= concurrency <= 1024:
        raise CommandError(f"--concurrency must be between 1 and 1024, got {concurrency}.")
    return WorkerPlan(kind=kind, queues=asked, concurrency=concurrency)


def job_pools(queues: list[str], concurrency: int) -> list[tuple[list[str], int]]:
    """The Procrastinate workers one worker process runs, each with its queues and how many jobs
    it runs at once. Webhook deliveries get a pool of their own (``WEBHOOK_CONCURRENCY``) beside
    the other queues: an attempt may wait seconds on a receiver, and receivers slow to answer
    must never hold the slots of indexing and maintenance (nor these theirs)."""
    if WEBHOOKS_QUEUE not in queues or len(queues) == 1:
        return [(queues, concurrency)]
    others = [queue for queue in queues if queue != WEBHOOKS_QUEUE]
    return [(others, concurrency), ([WEBHOOKS_QUEUE], settings.WEBHOOK_CONCURRENCY)]
