"""What the sync and async clients share besides their operations (``_operations``): the call,
the retry policy and its decisions, turning responses into data or typed errors, the client's
settings and headers, and what a lease's heartbeats decide. No I/O happens here: ``Client`` and
``AsyncClient`` only send, wait and sleep."""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Generic, Self, TypeVar, cast

import httpx

from ironclaw_client import models
from ironclaw_client.errors import (
    ApiError,
    Busy,
    InvalidArgument,
    RateLimited,
    TransportError,
    Unavailable,
    error_for,
)

T = TypeVar("T")

API = "/api/v1"
# The server caps a long-poll at this many seconds (conversations' and threads' wait_seconds).
MAX_WAIT_SECONDS = 30.0
# A long-poll's HTTP timeout is its wait plus this margin, so the wait never looks like a hang.
LONG_POLL_MARGIN_SECONDS = 10.0
HttpT = TypeVar("HttpT", httpx.Client, httpx.AsyncClient)
ClientT = TypeVar("ClientT")


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
class Call(Generic[T]):
    """One API call, answered by a ``T``. ``idempotent``: repeating it leaves the same state, so
    an ambiguous failure (503, or the connection lost after the request was sent) may be
    retried; so may a call with an ``idempotency_key`` (sent as ``Idempotency-Key``: the server
    does the work once and answers a repeat with the first answer). Every call is retried when
    the server refused it before acting (429, 409 ``*_busy``, no connection). ``wait_seconds``:
    a long-poll's wait, which its HTTP timeout outlasts. ``answer_field``: the answer is this
    field of the response's JSON."""

    method: str
    url: str
    idempotent: bool
    params: Mapping[str, Any] | None = None
    body: Any = None
    wait_seconds: float | None = None
    expected_empty: frozenset[int] = field(default_factory=frozenset)
    answer_field: str | None = None
    idempotency_key: str | None = None
    # An event stream's: its own headers (Last-Event-ID), and how long a read may wait.
    headers: Mapping[str, str] | None = None
    read_timeout: float | None = None

    @property
    def repeatable(self) -> bool:
        """Whether an attempt that may have been acted on can be sent again."""
        return self.idempotent or self.idempotency_key is not None

    def http_timeout(self, timeout: float) -> float | httpx.Timeout:
        if self.read_timeout is not None:
            return httpx.Timeout(timeout, read=self.read_timeout)
        if self.wait_seconds is None:
            return timeout
        return max(timeout, self.wait_seconds + LONG_POLL_MARGIN_SECONDS)


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


def retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        # An HTTP date is allowed too; the backoff covers it.
        return None


def decode(response: httpx.Response, call: Call[T]) -> T:
    """The call's answer (None for an expected empty response), or raise its typed error."""
    if response.status_code in call.expected_empty:
        return cast(T, None)
    if response.is_success:
        answer: Any = response.json() if response.content else None
        return cast(T, answer[call.answer_field] if call.answer_field else answer)
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


def may_retry_error(error: ApiError, call: Call[Any]) -> bool:
    if is_refusal(error):
        return True
    return isinstance(error, Unavailable) and call.repeatable


def may_retry_transport(error: httpx.TransportError, call: Call[Any]) -> bool:
    # Our own request was malformed: sending it again fails the same way.
    if isinstance(error, httpx.LocalProtocolError):
        return False
    # A failed connect never reached the server; anything later may have been acted on.
    if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout):
        return True
    return call.repeatable


class Attempts:
    """One call's attempts under a retry policy: the client sends, and after each failure asks
    ``wait_after`` how long to sleep before sending again."""

    def __init__(self, policy: RetryPolicy, call: Call[Any]):
        self.policy = policy
        self.call = call
        self.count = 0
        self.started = time.monotonic()

    def wait_after(self, error: ApiError | httpx.TransportError) -> float:
        """Seconds to wait before the next attempt; raises the failure instead when the call
        may not be repeated or the policy's attempts or seconds are spent."""
        self.count += 1
        if isinstance(error, ApiError):
            may_retry, retry_after = may_retry_error(error, self.call), error.retry_after
        else:
            may_retry, retry_after = may_retry_transport(error, self.call), None
        if may_retry:
            delay = self.policy.delay(self.count, retry_after)
            spent = time.monotonic() - self.started
            if self.count < self.policy.max_attempts and spent + delay <= self.policy.max_seconds:
                return delay
        if isinstance(error, ApiError):
            raise error
        raise TransportError(str(error) or type(error).__name__) from error


def user_id_header(user_id: str) -> bytes:
    # X-User-Id is UTF-8 text; httpx would encode a str header value as ASCII. A header value
    # cannot carry control characters or edge whitespace (HTTP strips or refuses them): refused
    # here with the reason, not sent and retried as if the network had failed.
    if (
        not user_id
        or user_id != user_id.strip()
        or any(ord(c) < 32 or ord(c) == 127 for c in user_id)
    ):
        raise InvalidArgument(
            f"user_id {user_id!r} must be non-empty text without control characters or "
            "leading or trailing spaces"
        )
    try:
        return user_id.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidArgument(f"user_id {user_id!r} is not valid Unicode text") from error


def absolute_url(base_url: str, url: str) -> str:
    # Pagination links are absolute already; ours are made absolute so that an httpx client
    # passed in by the caller needs no base_url of its own.
    return url if url.startswith(("http://", "https://")) else base_url + url


class ClientSettings(Generic[HttpT]):
    """What ``Client`` and ``AsyncClient`` hold alike: where and as whom they call, how they
    retry, and the httpx client whose requests they build."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        user_id: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        http: HttpT | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        if user_id is not None:
            user_id_header(user_id)  # refuses a name no header can carry, now rather than later
        self.user_id = user_id
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self._api_key = api_key
        self._owns_http = http is None
        self._http: HttpT = http or self._open_http()

    def _open_http(self) -> HttpT:
        raise NotImplementedError

    def for_user(self, user_id: str) -> Self:
        """The same key acting for ``user_id`` (a tenant key may only name its own tenant)."""
        return type(self)(
            self.base_url,
            self._api_key,
            user_id=user_id,
            retry=self.retry,
            timeout=self.timeout,
            http=self._http,
        )

    def _headers(self, call: Call[Any]) -> dict[bytes, bytes]:
        headers = {b"Authorization": f"Bearer {self._api_key}".encode()}
        if self.user_id is not None:
            headers[b"X-User-Id"] = user_id_header(self.user_id)
        if call.idempotency_key is not None:
            headers[b"Idempotency-Key"] = call.idempotency_key.encode("ascii")
        for name, value in (call.headers or {}).items():
            headers[name.encode("ascii")] = value.encode("utf-8")
        return headers

    def _request(self, call: Call[Any]) -> httpx.Request:
        return self._http.build_request(
            call.method,
            absolute_url(self.base_url, call.url),
            params=call.params,
            json=call.body,
            headers=self._headers(call),
            timeout=call.http_timeout(self.timeout),
        )


class LeaseState(Generic[ClientT]):
    """What ``Lease`` (a thread) and ``AsyncLease`` (a task) know and decide about the lease
    whose thread they heartbeat."""

    def __init__(
        self,
        client: ClientT,
        thread_id: str,
        worker_id: str,
        *,
        interval: float,
        lease_seconds: int | None,
        lease_epoch: int | None = None,
    ):
        self.client = client
        self.thread_id = thread_id
        self.worker_id = worker_id
        self.interval = interval
        self.lease_seconds = lease_seconds
        self.lease_epoch = lease_epoch
        self.beats = 0
        self.cancel_requested = False
        self.lost: ApiError | None = None
        self.last_error: Exception | None = None

    def _beat_answered(self, thread: models.Thread) -> None:
        self.beats += 1
        self.cancel_requested = bool(thread["cancel_requested"])

    def _beat_failed(self, error: ApiError | TransportError) -> bool:
        """Whether to beat again: not once the lease is gone."""
        if isinstance(error, ApiError) and error.code in {
            "lease_not_held",
            "lease_lost",
            "thread_not_found",
        }:
            self.lost = error
            return False
        # Anything else (an outage past the retry budget) is retried next beat: the lease
        # outlives a few missed ones.
        self.last_error = error
        return True
