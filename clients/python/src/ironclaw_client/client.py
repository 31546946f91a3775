"""The synchronous client."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, cast

import httpx

from ironclaw_client import _core
from ironclaw_client._core import API, MAX_WAIT_SECONDS, Call, RetryPolicy, compact, document_url
from ironclaw_client.errors import ApiError, TransportError
from ironclaw_client.models import (
    BusyPolicyEnum,
    Conversation,
    ConversationClearOutput,
    ConversationDetailOutput,
    Entry,
    MeOutput,
    MessageCreateOutput,
    ModeEnum,
    Thread,
    ThreadNextOutput,
    ThreadOutcomeInputKindEnum,
    ThreadOutcomeOutput,
    WorkspaceDocument,
    WorkspaceListEntry,
    WorkspacePatchResult,
    WorkspaceSearchResponse,
    WorkspaceTreeEntry,
    WorkspaceVersion,
    WorkspaceVersionDetail,
)


class Client:
    """The ironclaw REST API over one connection pool.

    ``Client(base_url, api_key)``; with a service key, ``client.for_user("alice")`` is alice's
    view (it sends ``X-User-Id``) sharing the pool. Refused calls are retried by ``retry`` (see
    the package README for which calls are retried on which answers).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        user_id: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        http: httpx.Client | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.user_id = user_id
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self._api_key = api_key
        self._owns_http = http is None
        self._http = http or httpx.Client(base_url=self.base_url, timeout=timeout)

    def for_user(self, user_id: str) -> Client:
        """The same key acting for ``user_id`` (a tenant key may only name its own tenant)."""
        return Client(
            self.base_url,
            self._api_key,
            user_id=user_id,
            retry=self.retry,
            timeout=self.timeout,
            http=self._http,
        )

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _headers(self) -> dict[bytes, bytes]:
        headers = {b"Authorization": f"Bearer {self._api_key}".encode()}
        if self.user_id is not None:
            headers[b"X-User-Id"] = _core.user_id_header(self.user_id)
        return headers

    def _send(self, call: Call) -> Any:
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.request(
                    call.method,
                    _core.absolute_url(self.base_url, call.url),
                    params=call.params,
                    json=call.body,
                    headers=self._headers(),
                    timeout=call.timeout or self.timeout,
                )
                return _core.decode(response, call)
            except ApiError as error:
                if not _core.may_retry_error(error, call):
                    raise
                failure: Exception = error
                retry_after = error.retry_after
            except httpx.TransportError as error:
                if not _core.may_retry_transport(error, call):
                    raise TransportError(str(error) or type(error).__name__) from error
                failure, retry_after = TransportError(str(error) or type(error).__name__), None
            delay = self.retry.delay(attempt, retry_after)
            spent = time.monotonic() - started
            if attempt >= self.retry.max_attempts or spent + delay > self.retry.max_seconds:
                raise failure
            time.sleep(delay)

    def _pages(self, call: Call) -> Iterator[dict[str, Any]]:
        """Every page of a paginated list, following its ``next`` links."""
        while True:
            page = self._send(call)
            yield page
            if not page.get("next"):
                return
            call = Call("GET", page["next"], idempotent=True, timeout=call.timeout)

    def me(self) -> MeOutput:
        return cast(MeOutput, self._send(Call("GET", f"{API}/me", idempotent=True)))

    def send_message(
        self, channel: str, content: str, *, scope: str | None = None
    ) -> MessageCreateOutput:
        """Post a user message. Not retried after an ambiguous failure: the API has no
        idempotency key, so a repeat could be a second message."""
        body = compact({"channel": channel, "content": content, "scope": scope})
        return cast(
            MessageCreateOutput,
            self._send(Call("POST", f"{API}/messages", idempotent=False, body=body)),
        )

    def conversations(
        self, *, channel: str | None = None, page_size: int | None = None
    ) -> Iterator[Conversation]:
        """Every conversation, newest first, across pages."""
        params = compact({"channel": channel, "limit": page_size})
        call = Call("GET", f"{API}/conversations", idempotent=True, params=params)
        for page in self._pages(call):
            yield from page["results"]

    def new_conversation(self, channel: str, *, scope: str | None = None) -> Conversation:
        body = compact({"channel": channel, "scope": scope})
        call = Call("POST", f"{API}/conversations/new", idempotent=False, body=body)
        return cast(Conversation, self._send(call))

    def get_conversation(self, conversation_id: str) -> ConversationDetailOutput:
        call = Call("GET", f"{API}/conversations/{conversation_id}", idempotent=True)
        return cast(ConversationDetailOutput, self._send(call))

    def clear_conversation(self, conversation_id: str) -> ConversationClearOutput:
        call = Call("POST", f"{API}/conversations/{conversation_id}/clear", idempotent=False)
        return cast(ConversationClearOutput, self._send(call))

    def set_busy_policy(
        self, conversation_id: str, busy_policy: BusyPolicyEnum | None
    ) -> Conversation:
        call = Call(
            "POST",
            f"{API}/conversations/{conversation_id}/policy",
            idempotent=True,
            body={"busy_policy": busy_policy},
        )
        return cast(Conversation, self._send(call))

    def _entries_page(
        self, conversation_id: str, after_seq: int, wait_seconds: float
    ) -> dict[str, Any]:
        wait_seconds = min(max(wait_seconds, 0.0), MAX_WAIT_SECONDS)
        call = Call(
            "GET",
            f"{API}/conversations/{conversation_id}/entries",
            idempotent=True,
            params={"after_seq": after_seq, "wait_seconds": wait_seconds},
            timeout=_core.long_poll_timeout(wait_seconds, self.timeout),
        )
        return cast(dict[str, Any], self._send(call))

    def entries(
        self, conversation_id: str, *, after_seq: int = 0, page_size: int | None = None
    ) -> Iterator[Entry]:
        """The conversation's entries after ``after_seq`` in seq order, across pages."""
        params = compact({"after_seq": after_seq, "limit": page_size})
        call = Call(
            "GET", f"{API}/conversations/{conversation_id}/entries", idempotent=True, params=params
        )
        for page in self._pages(call):
            yield from page["results"]

    def follow(
        self,
        conversation_id: str,
        *,
        after_seq: int = 0,
        wait_seconds: float = MAX_WAIT_SECONDS,
        stop: threading.Event | None = None,
    ) -> Iterator[Entry]:
        """Every entry after ``after_seq`` as it is written, for as long as the caller iterates
        (or until ``stop`` is set): a loop of ``wait_seconds`` long-polls."""
        while stop is None or not stop.is_set():
            page = self._entries_page(conversation_id, after_seq, wait_seconds)
            for entry in page["results"]:
                after_seq = max(after_seq, entry["seq"])
                yield entry

    def wait_for_reply(
        self, conversation_id: str, *, after_seq: int = 0, timeout: float = 60.0
    ) -> Entry:
        """The first agent entry after ``after_seq``; ``TimeoutError`` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no agent reply in {conversation_id} within {timeout} s")
            page = self._entries_page(conversation_id, after_seq, min(remaining, MAX_WAIT_SECONDS))
            for entry in page["results"]:
                after_seq = max(after_seq, entry["seq"])
                if entry["sender"] == "agent":
                    return cast(Entry, entry)

    def next_thread(
        self, worker_id: str, *, wait_seconds: float = 0, lease_seconds: int | None = None
    ) -> ThreadNextOutput | None:
        """Claim the oldest thread waiting for an engine (with its inbox), or None when none
        came within ``wait_seconds``. A service key without a user serves every tenant."""
        wait_seconds = min(max(wait_seconds, 0.0), MAX_WAIT_SECONDS)
        body = compact(
            {"worker_id": worker_id, "wait_seconds": wait_seconds, "lease_seconds": lease_seconds}
        )
        call = Call(
            "POST",
            f"{API}/threads/next",
            idempotent=False,
            body=body,
            timeout=_core.long_poll_timeout(wait_seconds, self.timeout),
            expected_empty=frozenset({204}),
        )
        return cast(ThreadNextOutput | None, self._send(call))

    def get_thread(self, thread_id: str) -> Thread:
        return cast(Thread, self._send(Call("GET", f"{API}/threads/{thread_id}", idempotent=True)))

    def claim_thread(
        self, thread_id: str, worker_id: str, *, lease_seconds: int | None = None
    ) -> Thread:
        """Take the lease. Retried freely: the lease holder claiming again keeps its lease."""
        body = compact({"worker_id": worker_id, "lease_seconds": lease_seconds})
        call = Call("POST", f"{API}/threads/{thread_id}/claim", idempotent=True, body=body)
        return cast(Thread, self._send(call))

    def heartbeat(
        self,
        thread_id: str,
        worker_id: str,
        *,
        lease_seconds: int | None = None,
        usage: Mapping[str, Any] | None = None,
    ) -> Thread:
        """Extend the lease; ``usage`` (see ``usage_body``) adds to the thread's counters, so a
        heartbeat with usage is only retried when the server refused it before acting."""
        body = compact(
            {
                "worker_id": worker_id,
                "lease_seconds": lease_seconds,
                "usage": dict(usage) if usage else None,
            }
        )
        call = Call("POST", f"{API}/threads/{thread_id}/heartbeat", idempotent=not usage, body=body)
        return cast(Thread, self._send(call))

    def keep_alive(
        self,
        thread_id: str,
        worker_id: str,
        *,
        interval: float = 10.0,
        lease_seconds: int | None = None,
    ) -> Lease:
        """A context manager that heartbeats the thread from a background thread while its
        block runs; ``lease.cancel_requested`` turns true when the thread is interrupted."""
        return Lease(self, thread_id, worker_id, interval=interval, lease_seconds=lease_seconds)

    def suspend_thread(self, thread_id: str, worker_id: str) -> Thread:
        call = Call(
            "POST",
            f"{API}/threads/{thread_id}/suspend",
            idempotent=False,
            body={"worker_id": worker_id},
        )
        return cast(Thread, self._send(call))

    def take_inbox(self, thread_id: str, worker_id: str) -> list[Entry]:
        """The thread's undelivered user messages, each returned once: a repeat after a lost
        answer would return nothing, so this is only retried on refusals."""
        call = Call(
            "POST",
            f"{API}/threads/{thread_id}/inbox",
            idempotent=False,
            body={"worker_id": worker_id},
        )
        return cast(list[Entry], self._send(call)["entries"])

    def record_outcome(
        self,
        thread_id: str,
        worker_id: str,
        kind: ThreadOutcomeInputKindEnum,
        *,
        response: str | None = None,
        error: str | None = None,
        gate: Mapping[str, str] | None = None,
        usage: Mapping[str, Any] | None = None,
    ) -> ThreadOutcomeOutput:
        body = compact(
            {
                "worker_id": worker_id,
                "kind": kind,
                "response": response,
                "error": error,
                "gate": dict(gate) if gate else None,
                "usage": dict(usage) if usage else None,
            }
        )
        call = Call("POST", f"{API}/threads/{thread_id}/outcome", idempotent=False, body=body)
        return cast(ThreadOutcomeOutput, self._send(call))

    def read_document(self, path: str) -> WorkspaceDocument:
        return cast(WorkspaceDocument, self._send(Call("GET", document_url(path), idempotent=True)))

    def write_document(
        self, path: str, content: str, *, metadata: Mapping[str, Any] | None = None
    ) -> WorkspaceDocument:
        body = compact({"content": content, "metadata": dict(metadata) if metadata else None})
        call = Call("PUT", document_url(path), idempotent=True, body=body)
        return cast(WorkspaceDocument, self._send(call))

    def delete_document(self, path: str) -> None:
        """Delete; a retry after an attempt that took effect raises ``NotFound``."""
        call = Call("DELETE", document_url(path), idempotent=True, expected_empty=frozenset({204}))
        self._send(call)

    def append_document(self, path: str, content: str) -> WorkspaceDocument:
        call = Call(
            "POST", document_url(path, "/append"), idempotent=False, body={"content": content}
        )
        return cast(WorkspaceDocument, self._send(call))

    def patch_document(
        self, path: str, old: str, new: str, *, replace_all: bool = False
    ) -> WorkspacePatchResult:
        body = {"old": old, "new": new, "replace_all": replace_all}
        call = Call("POST", document_url(path, "/patch"), idempotent=False, body=body)
        return cast(WorkspacePatchResult, self._send(call))

    def document_versions(
        self, path: str, *, page_size: int | None = None
    ) -> Iterator[WorkspaceVersion]:
        """The document's versions, newest first, across pages."""
        params = compact({"limit": page_size})
        call = Call("GET", document_url(path, "/versions"), idempotent=True, params=params)
        for page in self._pages(call):
            yield from page["results"]

    def document_version(self, path: str, version: int) -> WorkspaceVersionDetail:
        call = Call("GET", document_url(path, f"/versions/{int(version)}"), idempotent=True)
        return cast(WorkspaceVersionDetail, self._send(call))

    def restore_document(self, path: str, version: int) -> WorkspaceDocument:
        call = Call(
            "POST", document_url(path, f"/versions/{int(version)}/restore"), idempotent=True
        )
        return cast(WorkspaceDocument, self._send(call))

    def list_folder(
        self, path: str = "", *, page_size: int | None = None
    ) -> Iterator[WorkspaceListEntry]:
        """The folder's immediate children (folders are derived from document paths)."""
        params = compact({"path": path, "limit": page_size})
        call = Call("GET", f"{API}/workspace/list", idempotent=True, params=params)
        for page in self._pages(call):
            yield from page["results"]

    def tree(self, path: str = "", *, page_size: int | None = None) -> Iterator[WorkspaceTreeEntry]:
        """Every document at or below ``path``, in path order."""
        params = compact({"path": path, "limit": page_size})
        call = Call("GET", f"{API}/workspace/tree", idempotent=True, params=params)
        for page in self._pages(call):
            yield from page["results"]

    def search(
        self,
        query: str,
        *,
        limit: int | None = None,
        mode: ModeEnum | None = None,
        min_score: float | None = None,
    ) -> WorkspaceSearchResponse:
        body = compact({"query": query, "limit": limit, "mode": mode, "min_score": min_score})
        call = Call("POST", f"{API}/workspace/search", idempotent=True, body=body)
        return cast(WorkspaceSearchResponse, self._send(call))


class Lease:
    """Heartbeats a thread every ``interval`` seconds from a daemon thread while the ``with``
    block runs. ``cancel_requested`` reports an interrupt; ``lost`` is set (and the heartbeats
    stop) when the lease was taken away (409 ``lease_not_held``)."""

    def __init__(
        self,
        client: Client,
        thread_id: str,
        worker_id: str,
        *,
        interval: float,
        lease_seconds: int | None,
    ):
        self.client = client
        self.thread_id = thread_id
        self.worker_id = worker_id
        self.interval = interval
        self.lease_seconds = lease_seconds
        self.beats = 0
        self.cancel_requested = False
        self.lost: ApiError | None = None
        self.last_error: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{thread_id}", daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                thread = self.client.heartbeat(
                    self.thread_id, self.worker_id, lease_seconds=self.lease_seconds
                )
            except ApiError as error:
                if error.code in {"lease_not_held", "thread_not_found"}:
                    self.lost = error
                    return
                # Anything else (an outage past the retry budget) is retried next beat: the
                # lease outlives a few missed ones.
                self.last_error = error
                continue
            except TransportError as error:
                self.last_error = error
                continue
            self.beats += 1
            self.cancel_requested = bool(thread["cancel_requested"])
