from __future__ import annotations

import uuid
from typing import Any

from django.db import connection

from webhooks.models import WebhookDelivery
from webhooks.services import webhook_event_emit

EVENT_DATA = {"thread_id": "00000000-0000-0000-0000-000000000001", "state": "completed"}


def delivery_emitted(*, user_id: str = "alice", event: str = "thread.completed") -> WebhookDelivery:
    """Emit one event and return the one delivery it created."""
    assert webhook_event_emit(user_id=user_id, event_type=event, data=EVENT_DATA) == 1
    return WebhookDelivery.objects.filter(user_id=user_id).latest("created_at")


def delivery_jobs(delivery_id: uuid.UUID) -> list[dict[str, Any]]:
    """The delivery's Procrastinate jobs, oldest first."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT status, queue_name, task_name, lock, queueing_lock, scheduled_at"
            " FROM procrastinate_jobs WHERE args->>'delivery_id' = %s ORDER BY id",
            [str(delivery_id)],
        )
        names = [column.name for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def deliver_jobs_count() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'webhooks.deliver'"
        )
        return int(cursor.fetchone()[0])
