"""How the event streams show what they send: Server-Sent Event frames, and the entries and thread
events in them, the same whether a row comes from a read or from a notification's JSON."""

from __future__ import annotations

import datetime
import json
from typing import Any

from rest_framework import serializers

_TIME = serializers.DateTimeField()


def frame(event: str, data: dict[str, Any], event_id: str | None = None) -> bytes:
    """One Server-Sent Event. JSON has no raw newlines, so ``data`` is one line."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"{head}event: {event}\ndata: {body}\n\n".encode()


def _time(value: datetime.datetime | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value)
    rendered: str = _TIME.to_representation(value)
    return rendered


def entry_data(row: dict[str, Any]) -> dict[str, Any]:
    """An entry as the entries endpoint shows it, from a row or a notification alike."""
    return {
        "id": str(row["id"]),
        "seq": row["seq"],
        "sender": row["sender"],
        "content": row["content"],
        "thread_id": str(row["thread_id"]) if row["thread_id"] else None,
        "created_at": _time(row["created_at"]),
        "delivered_at": _time(row["delivered_at"]),
    }


_USAGE_FIELDS = ("input_tokens", "output_tokens", "tokens_used", "cost_usd", "model_time_ms")


def thread_event_data(event: dict[str, Any]) -> dict[str, Any]:
    """A thread event as streams show it: what happened, the thread's state and usage after it
    (a ``step`` event: the model call instead)."""
    data = event.get("data") or {}
    shown: dict[str, Any] = {
        "thread_id": str(event["thread_id"]),
        "seq": event["seq"],
        "type": event["type"],
        "at": _time(event["at"]),
    }
    if event["type"] == "step":
        shown["step"] = data
        return shown
    shown["state"] = data.get("state")
    shown["claim_count"] = data.get("claim_count")
    shown["usage"] = {"steps": data.get("step_count")} | {
        name: data.get(name) for name in _USAGE_FIELDS
    }
    if "outcome" in data:
        shown["outcome"] = data["outcome"]
    return shown
