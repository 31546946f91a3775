"""Python client for the ironclaw REST API: ``Client`` (sync) and ``AsyncClient`` (asyncio)."""

from __future__ import annotations

from ironclaw_client import _automation, _operations
from ironclaw_client._core import NO_RETRY, RetryPolicy, usage_body
from ironclaw_client._events import FINAL_THREAD_EVENTS, DeltaText, StreamEvent
from ironclaw_client.async_client import AsyncClient, AsyncLease
from ironclaw_client.client import Client, Lease
from ironclaw_client.errors import (
    ApiError,
    AuthenticationError,
    Busy,
    Conflict,
    InvalidArgument,
    IronclawError,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    TransportError,
    Unavailable,
    ValidationError,
)
from ironclaw_client.webhooks import WebhookVerificationError, sign_webhook, verify_webhook

# Every operation of the API and the client method serving it; a test checks this table against
# the server's OpenAPI schema both ways.
OPERATIONS = {**_operations.OPERATIONS, **_automation.OPERATIONS}

__all__ = [
    "FINAL_THREAD_EVENTS",
    "NO_RETRY",
    "OPERATIONS",
    "ApiError",
    "AsyncClient",
    "AsyncLease",
    "AuthenticationError",
    "Busy",
    "Client",
    "Conflict",
    "DeltaText",
    "InvalidArgument",
    "IronclawError",
    "Lease",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "RateLimited",
    "RetryPolicy",
    "StreamEvent",
    "TransportError",
    "Unavailable",
    "ValidationError",
    "WebhookVerificationError",
    "sign_webhook",
    "usage_body",
    "verify_webhook",
]
