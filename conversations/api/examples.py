"""OpenAPI examples of the main conversation and thread operations.

Copied from real responses (a message posted to a fresh conversation, with the thread left for an
engine); ``tests/ironclaw_site/test_openapi.py`` checks each still validates against its schema
and has the keys the live endpoint answers with.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiExample

CONVERSATION_ID = "535e3bec-370b-43d3-a5e9-d4d6c1e13ada"
THREAD_ID = "2b5376fa-6871-49b3-846a-846e075731a4"
CREATED_AT = "2026-11-29T03:35:49.675561Z"

MESSAGE_CREATE_REQUEST = OpenApiExample(
    "A user message",
    value={"channel": "web", "content": "What did we plan for the garden?"},
    request_only=True,
)
MESSAGE_CREATE_RESPONSE = OpenApiExample(
    "A new thread spawned",
    value={
        "conversation_id": CONVERSATION_ID,
        "thread_id": THREAD_ID,
        "action": "spawned",
        "seq": 1,
        "interrupted_thread_id": None,
    },
    response_only=True,
    status_codes=["202"],
)
ENTRIES_RESPONSE = OpenApiExample(
    "The message and the thread's start",
    value={
        "next": None,
        "previous": None,
        "results": [
            {
                "id": "f810ff00-ccdb-479d-9a9f-c62300a899e6",
                "seq": 1,
                "sender": "user",
                "content": "What did we plan for the garden?",
                "thread_id": THREAD_ID,
                "created_at": CREATED_AT,
                "delivered_at": CREATED_AT,
            },
            {
                "id": "ba12c35f-bc95-4267-8834-4374d651b17b",
                "seq": 2,
                "sender": "system",
                "content": "Thread started",
                "thread_id": THREAD_ID,
                "created_at": CREATED_AT,
                "delivered_at": None,
            },
        ],
    },
    response_only=True,
    status_codes=["200"],
)
THREAD_RESPONSE = OpenApiExample(
    "A thread waiting for its engine",
    value={
        "id": THREAD_ID,
        "conversation_id": CONVERSATION_ID,
        "kind": "foreground",
        "state": "created",
        "goal": "What did we plan for the garden?",
        "tracked": True,
        "lease_owner": "",
        "lease_expires_at": None,
        "outcome": None,
        "cancel_requested": False,
        "claim_count": 0,
        "step_count": 0,
        "tokens_used": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "cost_usd": 0.0,
        "model_time_ms": 0,
        "metadata": {"goal_entry_seqs": [1], "request_id": "0f6c2d1e9b8a4c3d"},
        "created_at": "2026-11-29T03:35:49.676149Z",
        "updated_at": "2026-11-29T03:35:49.676152Z",
        "enqueued_at": CREATED_AT,
        "claimed_at": None,
        "started_at": None,
        "finished_at": None,
        "model_calls": [],
    },
    response_only=True,
    status_codes=["200"],
)
