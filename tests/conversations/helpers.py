from __future__ import annotations

import uuid
from typing import Any

from django.db import connection

from conversations.models import ConversationEntry


def entries_of(conversation_id: uuid.UUID) -> list[tuple[int, str, str, uuid.UUID | None]]:
    return [
        (entry.seq, entry.sender, entry.content, entry.thread_id)
        for entry in ConversationEntry.objects.filter(conversation_id=conversation_id).order_by(
            "seq"
        )
    ]


def run_jobs_for(thread_id: Any) -> list[str]:
    """Statuses of the thread's run jobs in procrastinate_jobs, oldest first."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT status FROM procrastinate_jobs WHERE task_name = %s AND args->>'thread_id' = %s"
            " ORDER BY id",
            ["conversations.tasks.run_thread", str(thread_id)],
        )
        return [row[0] for row in cursor.fetchall()]


def mark_run_jobs_taken(thread_id: Any) -> None:
    """What a worker does when it picks a job up: it leaves the queue (no longer ``todo``)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE procrastinate_jobs SET status = 'doing' WHERE task_name = %s"
            " AND args->>'thread_id' = %s AND status = 'todo'",
            ["conversations.tasks.run_thread", str(thread_id)],
        )
