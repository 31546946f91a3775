"""What the sync and async clients share: the operation table, request building, the retry
policy and turning responses into data or typed errors. No I/O happens here."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import httpx

from ironclaw_client.errors import ApiError, Busy, RateLimited, Unavailable, error_for

API = "/api/v1"
# The server caps a long-poll at this many seconds (conversations' and threads' wait_seconds).
MAX_WAIT_SECONDS = 30.0
# A long-poll's HTTP timeout is its wait plus this margin, so the wait never looks like a hang.
LONG_POLL_MARGIN_SECONDS = 10.0

# Every operation of the API and the client method serving it; a test checks this table against
# the server's OpenAPI schema both ways.
OPERATIONS: dict[tuple[str, str], str] = {
    ("GET", "/api/v1/me"): "me",
    ("POST", "/api/v1/messages"): "send_message",
    ("GET", "/api/v1/conversations"): "conversations",
    ("POST", "/api/v1/conversations/new"): "new_conversation",
    ("GET", "/api/v1/conversations/{conversation_id}"): "get_conversation",
    ("GET", "/api/v1/conversations/{conversation_id}/entries"): "entries",
    ("POST", "/api/v1/conversations/{conversation_id}/clear"): "clear_conversation",
    ("POST", "/api/v1/conversations/{conversation_id}/policy"): "set_busy_policy",
    ("POST", "/api/v1/threads/next"): "next_thread",
    ("GET", "/api/v1/threads/{thread_id}"): "get_thread",
    ("POST", "/api/v1/threads/{thread_id}/claim"): "claim_thread",
    ("POST", "/api/v1/threads/{thread_id}/heartbeat"): "heartbeat",
    ("POST", "/api/v1/threads/{thread_id}/suspend"): "suspend_thread",
    ("POST", "/api/v1/threads/{thread_id}/inbox"): "take_inbox",
    ("POST", "/api/v1/threads/{thread_id}/outcome"): "record_outcome",
    ("GET", "/api/v1/workspace/documents/{path}"): "read_document",
    ("PUT", "/api/v1/workspace/documents/{path}"): "write_document",
    ("DELETE", "/api/v1/workspace/documents/{path}"): "delete_document",
    ("POST", "/api/v1/workspace/documents/{path}/append"): "append_document",
    ("POST", "/api/v1/workspace/documents/{path}/patch"): "patch_document",
    ("GET", "/api/v1/workspace/documents/{path}/versions"): "document_versions",
    ("GET", "/api/v1/workspace/documents/{path}/versions/{version}"): "document_version",
    ("POST", "/api/v1/workspace/documents/{path}/versions/{version}/restore"): "restore_document",
    ("GET", "/api/v1/workspace/list"): "list_folder",
    ("GET", "/api/v1/workspace/tree"): "tree",
    ("POST", "/api/v1/workspace/search"): "search",
}


@dataclass(frozen=True)
class RetryPolicy:
    """How refused calls are retried: exponential backoff with jitter, never sooner than the
    server's ``Retry-After``, until ``max_attempts`` calls or ``max_seconds`` in all."""

    max_attempts: int = 5
    max_seconds: float = 30.0
    base_delay: float = 0.25
    max_delay: float = 8.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        backoff = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        # Jitter spreads out clients refused together, so they do not return together.
        backoff *= random.uniform(0.5, 1.0)
        return max(backoff, retry_after or 0.0)


NO_RETRY = RetryPolicy(max_attempts=1, max_seconds=0)


@dataclass(frozen=True)
class Call:
    """One API call. ``idempotent``: repeating it leaves the same state, so an ambiguous failure
    (503, or the connection lost after the request was sent) may be retried; every call is
    retried when the server refused it before acting (429, 409 ``*_busy``, no connection)."""

    method: str
    url: str
    idempotent: bool
    params: Mapping[str, Any] | None = None
    body: Any = None
    timeout: float | None = None
    expected_empty: frozenset[int] = field(default_factory=frozenset)


def document_url(path: str, suffix: str = "") -> str:
    # Slashes stay: a document path is a folder path. Everything else is percent-encoded.
    return f"{API}/workspace/documents/{quote(path, safe='/')}{suffix}"


def usage_body(
    *,
    steps: int = 0,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cost_usd: Decimal | float | str = 0,
    model_ms: float = 0,
) -> dict[str, Any]:
    """A usage report (heartbeat: the increase since the last one; outcome: the run's total)."""
    return {
        "steps": steps,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cost_usd": str(Decimal(str(cost_usd)).quantize(Decimal("0.000001"))),
        "model_ms": model_ms,
    }


def compact(values: Mapping[str, Any]) -> dict[str, Any]:
    """The fields the caller set (None means "not sent", so server defaults apply)."""
    return {name: value for name, value in values.items() if value is not None}


def long_poll_timeout(wait_seconds: float, timeout: float) -> float:
    return max(timeout, wait_seconds + LONG_POLL_MARGIN_SECONDS)


def retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        # An HTTP date is allowed too; the backoff covers it.
        return None


def decode(response: httpx.Response, call: Call) -> Any:
    """The response's JSON (None for an expected empty answer), or raise its typed error."""
    if response.status_code in call.expected_empty:
        return None
    if response.is_success:
        return response.json() if response.content else None
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    raise error_for(
        response.status_code,
        body,
        retry_after=retry_after_seconds(response),
        fallback_text=response.text,
    )


def is_refusal(error: ApiError) -> bool:
    """The server refused before acting (nothing changed): safe to repeat for any call."""
    return isinstance(error, RateLimited | Busy)


def may_retry_error(error: ApiError, call: Call) -> bool:
    if is_refusal(error):
        return True
    return isinstance(error, Unavailable) and call.idempotent


def may_retry_transport(error: httpx.TransportError, call: Call) -> bool:
    # A failed connect never reached the server; anything later may have been acted on.
    if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout):
        return True
    return call.idempotent


def user_id_header(user_id: str) -> bytes:
    # X-User-Id is UTF-8 text; httpx would encode a str header value as ASCII.
    return user_id.encode("utf-8")


def absolute_url(base_url: str, url: str) -> str:
    # Pagination links are absolute already; ours are made absolute so that an httpx client
    # passed in by the caller needs no base_url of its own.
    return url if url.startswith(("http://", "https://")) else base_url + url
