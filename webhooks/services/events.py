"""Events: the Python door to the SQL function that creates deliveries."""

from __future__ import annotations

import json
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection


def webhook_event_emit(*, user_id: str, event_type: str, data: dict[str, Any]) -> int:
    """Create one delivery, and its job, per enabled webhook of the tenant that wants
    ``event_type``, in the caller's transaction (the SQL function ``webhooks_event_emit``, which
    the thread and entry triggers call too). Returns how many."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT webhooks_event_emit(%s, %s, %s::jsonb)",
            [user_id, event_type, json.dumps(data, cls=DjangoJSONEncoder)],
        )
        row = cursor.fetchone()
    return int(row[0])
