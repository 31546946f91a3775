from __future__ import annotations

import uuid
from typing import Any

from django.db import transaction

from conversations.models import ConversationEntry
from conversations.services import thread_claim_runnable


def entries_of(conversation_id: uuid.UUID) -> list[tuple[int, str, str, uuid.UUID | None]]:
    return [
        (entry.seq, entry.sender, entry.content, entry.thread_id)
        for entry in ConversationEntry.objects.filter(conversation_id=conversation_id).order_by(
            "seq"
        )
    ]


def waiting_for_a_worker(thread_id: Any) -> bool:
    """Whether the thread is in the threads queue: a turn worker's claim would take it now. The
    claims are made (every runnable thread, oldest first) and rolled back."""
    claimed: list[Any] = []
    with transaction.atomic():
        while (thread := thread_claim_runnable(worker_id="probe")) is not None:
            claimed.append(thread.id)
        transaction.set_rollback(True)
    return thread_id in claimed
