"""Retention of engine checkpoints: their storage is bounded by the threads of the last
``RUNTIME_RETENTION_DAYS`` and the live ones, not by every thread ever run.

A turn checkpoints into ``engine/.runtime/threads/<thread_id>.json`` and
``engine/.runtime/conversations/<conversation_id>.json`` (``engine.checkpoint``): runtime
documents that only a later run of the thread reads back. A terminal thread (completed, failed,
stopped) never runs again: no transition leaves those states. A checkpoint is deleted when both
hold:

- it has not been written for ``older_than_days``;
- no thread of its tenant keeps it. A thread checkpoint is kept by the thread of that id, a
  conversation checkpoint by any thread of that conversation; a thread keeps it while it is live
  (created, running, or paused: waiting at a gate or suspended, which resume from it) and for
  ``older_than_days`` after it finished. So the checkpoint of a thread or conversation that no
  longer exists goes too, once it is as old.

Only runtime documents named exactly so (a lowercase UUID, then ``.json``) are checkpoints;
anything else in those folders is left alone.

Races, none of which deletes a checkpoint in use: each batch locks the rows it deletes with
``SKIP LOCKED``, so a checkpoint a turn is writing (its upsert holds the row) is left to the next
run, and the prune never waits for a turn. A write that committed after the batch's snapshot gave
the row a new ``updated_at``; PostgreSQL checks the batch's conditions again on that newer row
before locking it, and keeps it. A thread spawned after the snapshot has written nothing older
than the cut-off.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.utils import timezone

from conversations.models import LIVE_STATES
from engine.checkpoint import CONVERSATION_CHECKPOINTS, THREAD_CHECKPOINTS
from engine.metrics import CHECKPOINTS_DELETED

CHECKPOINTS_PRUNE_BATCH_SIZE = 1_000
# A hundred years: beyond it the cut-off date is out of range.
MAX_RETENTION_DAYS = 36_500

_UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# Below every id a document can have: the first batch's lower bound.
_BEFORE_EVERY_ID = uuid.UUID(int=0)


@dataclass(frozen=True)
class _CheckpointKind:
    name: str
    folder: str
    # The column of conversations_thread holding the id the checkpoint is named after, both
    # indexed: the thread's primary key, or its conversation's foreign key.
    thread_column: str

    @property
    def name_pattern(self) -> str:
        """A POSIX regular expression matching the checkpoint's path; its group is the id."""
        return f"^{re.escape(self.folder)}({_UUID})\\.json$"


_KINDS = (
    _CheckpointKind("thread", THREAD_CHECKPOINTS, "id"),
    _CheckpointKind("conversation", CONVERSATION_CHECKPOINTS, "conversation_id"),
)

# The folder is written into the SQL, never passed as a parameter: the planner then sees that the
# statement only wants rows of the kind's partial index (engine migration 0001) and walks it, even
# in a generic plan. The id named by the path is NULL (and the row skipped) for any other name, so
# the cast never sees text that is not a UUID. A finished thread without finished_at (the services
# always set it) keeps nothing: it counts as finished long ago.
_DUE = """
    SELECT {columns} FROM workspace_document d
    CROSS JOIN LATERAL (SELECT substring(d.path FROM %(pattern)s)::uuid AS id) named
    WHERE d.is_runtime AND d.path LIKE '{folder}%%'
      AND named.id IS NOT NULL
      AND d.updated_at < %(cutoff)s
      AND NOT EXISTS (
          SELECT 1 FROM conversations_thread t
          WHERE t.{thread_column} = named.id AND t.user_id = d.user_id
            AND (t.state = ANY(%(live)s) OR t.finished_at >= %(cutoff)s)
      )
"""

# Each batch starts after the last id of the previous one, so one run walks the checkpoints once
# instead of rescanning the ones kept every batch. FOR UPDATE, not NO KEY: the rows are deleted.
# SKIP LOCKED: a checkpoint a turn is writing is the next run's, and the batch never waits.
_DELETE_BATCH = """
    WITH due AS (
        {due} AND d.id > %(after)s
        ORDER BY d.id LIMIT %(limit)s
        FOR UPDATE OF d SKIP LOCKED
    )
    DELETE FROM workspace_document d USING due WHERE d.id = due.id
    RETURNING d.id, pg_column_size(d.content)
"""


def _due(kind: _CheckpointKind, columns: str) -> str:
    return _DUE.format(columns=columns, folder=kind.folder, thread_column=kind.thread_column)


def _delete_statement(kind: _CheckpointKind) -> str:
    return _DELETE_BATCH.format(due=_due(kind, "d.id"))


@dataclass
class CheckpointsPruneResult:
    """Checkpoints deleted (with ``dry_run``: due) by kind, and the space they took in the table
    (``pg_column_size``: as stored, compressed)."""

    thread_checkpoints: int = 0
    conversation_checkpoints: int = 0
    stored_bytes: int = 0
    batches: int = 0

    @property
    def checkpoints(self) -> int:
        return self.thread_checkpoints + self.conversation_checkpoints

    def add(self, kind: _CheckpointKind, checkpoints: int, stored_bytes: int) -> None:
        if kind.name == "thread":
            self.thread_checkpoints += checkpoints
        else:
            self.conversation_checkpoints += checkpoints
        self.stored_bytes += stored_bytes


def checkpoints_prune(
    *,
    older_than_days: int,
    batch_size: int = CHECKPOINTS_PRUNE_BATCH_SIZE,
    dry_run: bool = False,
    now: datetime | None = None,
    progress: Callable[[CheckpointsPruneResult], None] | None = None,
) -> CheckpointsPruneResult:
    """Delete the thread and conversation checkpoints that are due (see the module's docstring)
    for a cut-off ``older_than_days`` ago, ``batch_size`` at a time, each batch one statement and
    so its own short transaction: an interrupted run leaves nothing half done, and the next one
    resumes. Locks only the rows it deletes, skipping any that a writer holds. ``dry_run`` counts
    only; ``now`` moves the cut-off with it (the retention benchmark's clock)."""
    if not 1 <= older_than_days <= MAX_RETENTION_DAYS:
        raise ValueError(f"older_than_days must be between 1 and {MAX_RETENTION_DAYS}")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    cutoff = (now or timezone.now()) - timedelta(days=older_than_days)
    result = CheckpointsPruneResult()
    for kind in _KINDS:
        parameters: dict[str, Any] = {
            "pattern": kind.name_pattern,
            "cutoff": cutoff,
            "live": [str(state) for state in LIVE_STATES],
        }
        if dry_run:
            with connection.cursor() as cursor:
                cursor.execute(
                    _due(kind, "count(*), coalesce(sum(pg_column_size(d.content)), 0)"),
                    parameters,
                )
                found, stored_bytes = cursor.fetchone()
            result.add(kind, found, stored_bytes)
            continue
        statement = _delete_statement(kind)
        after = _BEFORE_EVERY_ID
        while True:
            with connection.cursor() as cursor:
                cursor.execute(statement, {**parameters, "after": after, "limit": batch_size})
                deleted = cursor.fetchall()
            if deleted:
                result.add(kind, len(deleted), sum(size or 0 for _, size in deleted))
                result.batches += 1
                CHECKPOINTS_DELETED.labels(kind=kind.name).inc(len(deleted))
                if progress:
                    progress(result)
            if len(deleted) < batch_size:
                break
            after = max(document_id for document_id, _ in deleted)
    return result
