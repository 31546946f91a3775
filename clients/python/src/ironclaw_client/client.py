"""The synchronous client: sends the calls of ``_operations`` with ``httpx.Client``, sleeping
between retries and heartbeating a lease from a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Iterator, Mapping
from typing import Any, TypeVar

import httpx

from ironclaw_client import _core, _events, _operations, models
from ironclaw_client._automation import AutomationMethods
from ironclaw_client._core import MAX_WAIT_SECONDS, Call
from ironclaw_client._events import STREAM_READ_TIMEOUT_SECONDS, StreamEvent
from ironclaw_client.errors import ApiError, IronclawError, TransportError

T = TypeVar("T")


class Client(_core.ClientSettings[httpx.Client], AutomationMethods):
    """The ironclaw REST API over one connection pool.

    ``Client(base_url, api_key)``; with a service key, ``client.for_user("alice")`` is alice's
    view (it sends ``X-User-Id``) sharing the pool. Refused calls are retried by ``retry`` (see
    the package README for which calls are retried on which answers).
    """

    def _open_http(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=self.timeout)

    def close(self) -> None:
        """Close the connection pool, unless the caller passed it in (``http=``)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _send(self, call: Call[T]) -> T:
        attempts = _core.Attempts(self.retry, call)
        while True:
            try:
                return _core.decode(self._http.send(self._request(call)), call)
            except (ApiError, httpx.TransportError) as error:
                delay = attempts.wait_after(error)
            time.sleep(delay)

    def _items(self, stream: _operations.Stream[T]) -> Iterator[T]:
        while (call := stream.next_call()) is not None:
            try:
                page = self._send(call)
            except IronclawError as error:
                wait = stream.after_failure(error)
                if wait is None:
                    raise
                time.sleep(wait)
                continue
            yield from stream.take(page)

    def _follow_events(self, follow: _events.EventFollow) -> Generator[StreamEvent, None, None]:
        while not follow.over:
            try:
                response = self._http.send(self._request(follow.call()), stream=True)
            except httpx.TransportError as error:
                follow.failed(error)
            else:
                try:
                    yield from self._connection_events(follow, response)
                finally:
                    response.close()
            if not follow.over:
                time.sleep(follow.delay())

    def _connection_events(
        self, follow: _events.EventFollow, response: httpx.Response
    ) -> Iterator[StreamEvent]:
        try:
            if not follow.opened(response):
                response.read()
                follow.refused(response)
                return
            for chunk in response.iter_bytes():
                for event in follow.feed(chunk):
                    yield event
                    if follow.last(event):
                        return
        except httpx.TransportError as error:
            follow.failed(error)
            return
        check = follow.closed()
        if check is not None:
            try:
                thread = self._send(check)
            except IronclawError:
                thread = None
            follow.thread_checked(thread)

    def stream_events(
        self,
        conversation_id: str | None = None,
        *,
        thread_id: str | None = None,
        after: str | int | None = None,
        read_timeout: float = STREAM_READ_TIMEOUT_SECONDS,
    ) -> Generator[StreamEvent, None, None]:
        """A conversation's (or with ``thread_id``, a thread's) events as they happen, from the
        Server-Sent Events of ``GET .../events``: entries, thread events and token deltas.
        ``after``: an event's ``id`` to resume after (``"0"``: from the start); without it,
        from now. Reconnects with the last id seen after a dropped or silent connection (no
        byte in ``read_timeout`` s), a restart, 429/502/503/504 or the server's end of the
        stream, so nothing durable is missed or repeated; a conversation's stream goes on until
        the caller stops iterating (``close()`` the generator), a thread's ends after its final
        event. Other errors raise (``NotFound``, ``ValidationError`` for a foreign cursor)."""
        return self._follow_events(
            _events.EventFollow(
                conversation_id,
                thread_id,
                after=after,
                policy=self.retry,
                read_timeout=read_timeout,
            )
        )

    def me(self) -> models.MeOutput:
        """``GET /api/v1/me``: the user the key acts for, and whether it is a service key."""
        return self._send(_operations.me())

    def send_message(
        self, channel: str, content: str, *, scope: str | None = None
    ) -> models.MessageCreateOutput:
        """Post a user message; retried under one idempotency key, so it is stored once."""
        return self._send(_operations.send_message(channel, content, scope=scope))

    def conversations(
        self, *, channel: str | None = None, page_size: int | None = None
    ) -> Iterator[models.Conversation]:
        """Every conversation, newest first, across pages."""
        return self._items(_operations.conversations(channel=channel, page_size=page_size))

    def new_conversation(self, channel: str, *, scope: str | None = None) -> models.Conversation:
        """Start an empty conversation in ``channel``; later messages to the channel go to it."""
        return self._send(_operations.new_conversation(channel, scope=scope))

    def get_conversation(self, conversation_id: str) -> models.ConversationDetailOutput:
        """The conversation with its active threads."""
        return self._send(_operations.get_conversation(conversation_id))

    def clear_conversation(self, conversation_id: str) -> models.ConversationClearOutput:
        """Delete the conversation's entries; retried under one idempotency key."""
        return self._send(_operations.clear_conversation(conversation_id))

    def set_busy_policy(
        self, conversation_id: str, busy_policy: models.BusyPolicyEnum | None
    ) -> models.Conversation:
        """What a message does while a thread runs: inject, queue, reject or interrupt."""
        return self._send(_operations.set_busy_policy(conversation_id, busy_policy))

    def entries(
        self,
        conversation_id: str,
        *,
        after_seq: int = 0,
        page_size: int | None = None,
        sender: models.SenderEnum | None = None,
    ) -> Iterator[models.Entry]:
        """The conversation's entries after ``after_seq`` in seq order, across pages; only
        ``sender``'s ("user", "agent" or "system") when given."""
        stream = _operations.entries(
            conversation_id, after_seq=after_seq, page_size=page_size, sender=sender
        )
        return self._items(stream)

    def follow(
        self,
        conversation_id: str,
        *,
        after_seq: int = 0,
        wait_seconds: float = MAX_WAIT_SECONDS,
        stop: threading.Event | None = None,
        sender: models.SenderEnum | None = None,
    ) -> Iterator[models.Entry]:
        """Each entry after ``after_seq`` as it is written, by long-polls, until ``stop`` is set;
        only ``sender``'s when given (each long-poll then waits for one of them)."""
        return self._items(
            _operations.NewEntries(
                conversation_id,
                after_seq=after_seq,
                wait_seconds=wait_seconds,
                stop=stop,
                sender=sender,
            )
        )

    def wait_for_reply(
        self, conversation_id: str, *, after_seq: int = 0, timeout: float = 60.0
    ) -> models.Entry:
        """The first agent entry after ``after_seq``; ``TimeoutError`` after ``timeout`` s."""
        replies = _operations.AgentReplies(conversation_id, after_seq=after_seq, timeout=timeout)
        return next(self._items(replies))

    def next_thread(
        self, worker_id: str, *, wait_seconds: float = 0, lease_seconds: int | None = None
    ) -> models.ThreadNextOutput | None:
        """Claim the oldest waiting thread (any tenant's for a service key without a user)."""
        return self._send(
            _operations.next_thread(
                worker_id, wait_seconds=wait_seconds, lease_seconds=lease_seconds
            )
        )

    def get_thread(self, thread_id: str) -> models.Thread:
        """The thread: its state, lease, usage counters and outcome."""
        return self._send(_operations.get_thread(thread_id))

    def claim_thread(
        self, thread_id: str, worker_id: str, *, lease_seconds: int | None = None
    ) -> models.Thread:
        """Take the lease; retried freely, as the holder claiming again keeps its lease."""
        return self._send(
            _operations.claim_thread(thread_id, worker_id, lease_seconds=lease_seconds)
        )

    def heartbeat(
        self,
        thread_id: str,
        worker_id: str,
        *,
        lease_seconds: int | None = None,
        usage: Mapping[str, Any] | None = None,
        lease_epoch: int | None = None,
    ) -> models.Thread:
        """Extend the lease; ``usage`` (see ``usage_body``) adds to the thread's counters.
        ``lease_epoch``: the claim's ``claim_count``; given, a takeover since raises
        ``Conflict`` ``lease_lost`` (the same for the other writes under a lease)."""
        return self._send(
            _operations.heartbeat(
                thread_id,
                worker_id,
                lease_seconds=lease_seconds,
                usage=usage,
                lease_epoch=lease_epoch,
            )
        )

    def keep_alive(
        self,
        thread_id: str,
        worker_id: str,
        *,
        interval: float = 10.0,
        lease_seconds: int | None = None,
        lease_epoch: int | None = None,
    ) -> Lease:
        """A ``with`` block's ``Lease``: a background thread heartbeats while the block runs."""
        return Lease(
            self,
            thread_id,
            worker_id,
            interval=interval,
            lease_seconds=lease_seconds,
            lease_epoch=lease_epoch,
        )

    def suspend_thread(
        self, thread_id: str, worker_id: str, *, lease_epoch: int | None = None
    ) -> models.Thread:
        """Park the running thread and give up its lease; the next user message resumes it."""
        return self._send(_operations.suspend_thread(thread_id, worker_id, lease_epoch=lease_epoch))

    def take_inbox(
        self, thread_id: str, worker_id: str, *, lease_epoch: int | None = None
    ) -> list[models.Entry]:
        """The thread's undelivered user messages, each handed out once."""
        return self._send(_operations.take_inbox(thread_id, worker_id, lease_epoch=lease_epoch))

    def record_outcome(
        self,
        thread_id: str,
        worker_id: str,
        kind: models.ThreadOutcomeInputKindEnum,
        *,
        response: str | None = None,
        error: str | None = None,
        gate: Mapping[str, str] | None = None,
        usage: Mapping[str, Any] | None = None,
        lease_epoch: int | None = None,
    ) -> models.ThreadOutcomeOutput:
        """End the run as ``kind`` with its response, error or gate, and its total usage."""
        return self._send(
            _operations.record_outcome(
                thread_id,
                worker_id,
                kind,
                response=response,
                error=error,
                gate=gate,
                usage=usage,
                lease_epoch=lease_epoch,
            )
        )

    def write_checkpoint(
        self, thread_id: str, worker_id: str, content: str, *, lease_epoch: int
    ) -> models.WorkspaceDocument:
        """Write the thread's checkpoint under the lease of epoch ``lease_epoch`` (the claim's
        ``claim_count``); once anyone has claimed the thread since, ``Conflict`` ``lease_lost``."""
        return self._send(
            _operations.write_checkpoint(thread_id, worker_id, content, lease_epoch=lease_epoch)
        )

    def publish_delta(
        self,
        thread_id: str,
        *,
        worker_id: str,
        lease_epoch: int,
        step: int,
        text: str,
        offset: int = 0,
    ) -> int:
        """Publish model step ``step``'s text from character ``offset`` on (0: the whole text so
        far) to the thread's listeners, under the lease of epoch ``lease_epoch``; never stored.
        At most 64 KiB of text a call. Returns how many notifications carried it; once anyone
        has claimed the thread since, ``Conflict`` ``lease_lost``."""
        return self._send(
            _operations.publish_delta(
                thread_id,
                worker_id=worker_id,
                lease_epoch=lease_epoch,
                step=step,
                text=text,
                offset=offset,
            )
        )

    def read_document(self, path: str) -> models.WorkspaceDocument:
        """The workspace document at ``path``, with its content and metadata."""
        return self._send(_operations.read_document(path))

    def write_document(
        self, path: str, content: str, *, metadata: Mapping[str, Any] | None = None
    ) -> models.WorkspaceDocument:
        """Create or replace the document at ``path``; the old content stays as a version."""
        return self._send(_operations.write_document(path, content, metadata=metadata))

    def delete_document(self, path: str) -> None:
        """Delete; a retry after an attempt that took effect raises ``NotFound``."""
        return self._send(_operations.delete_document(path))

    def append_document(self, path: str, content: str) -> models.WorkspaceDocument:
        """Add ``content`` to the document's end; retried under one idempotency key."""
        return self._send(_operations.append_document(path, content))

    def patch_document(
        self, path: str, old: str, new: str, *, replace_all: bool = False
    ) -> models.WorkspacePatchResult:
        """Replace ``old`` by ``new`` in the document (every occurrence with ``replace_all``)."""
        return self._send(_operations.patch_document(path, old, new, replace_all=replace_all))

    def document_versions(
        self, path: str, *, page_size: int | None = None
    ) -> Iterator[models.WorkspaceVersion]:
        """The document's versions, newest first, across pages."""
        return self._items(_operations.document_versions(path, page_size=page_size))

    def document_version(self, path: str, version: int) -> models.WorkspaceVersionDetail:
        """Version ``version`` of the document, with its content."""
        return self._send(_operations.document_version(path, version))

    def restore_document(self, path: str, version: int) -> models.WorkspaceDocument:
        """Write version ``version``'s content back as the document's newest version."""
        return self._send(_operations.restore_document(path, version))

    def list_folder(
        self, path: str = "", *, page_size: int | None = None
    ) -> Iterator[models.WorkspaceListEntry]:
        """The folder's immediate children (folders are derived from document paths)."""
        return self._items(_operations.list_folder(path, page_size=page_size))

    def tree(
        self, path: str = "", *, page_size: int | None = None
    ) -> Iterator[models.WorkspaceTreeEntry]:
        """Every document at or below ``path``, in path order."""
        return self._items(_operations.tree(path, page_size=page_size))

    def search(
        self,
        query: str,
        *,
        limit: int | None = None,
        mode: models.ModeEnum | None = None,
        min_score: float | None = None,
    ) -> models.WorkspaceSearchResponse:
        """The documents matching ``query``, best first (``mode``: hybrid, fts or vector)."""
        return self._send(_operations.search(query, limit=limit, mode=mode, min_score=min_score))


class Lease(_core.LeaseState[Client]):
    """Heartbeats a thread every ``interval`` seconds from a daemon thread while the ``with``
    block runs. ``cancel_requested`` reports an interrupt; ``lost`` is set (and the heartbeats
    stop) when the lease was taken away (409 ``lease_not_held``)."""

    _stop: threading.Event
    _thread: threading.Thread

    def __enter__(self) -> Lease:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"lease-{self.thread_id}", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                thread = self.client.heartbeat(
                    self.thread_id,
                    self.worker_id,
                    lease_seconds=self.lease_seconds,
                    lease_epoch=self.lease_epoch,
                )
            except (ApiError, TransportError) as error:
                if self._beat_failed(error):
                    continue
                return
            self._beat_answered(thread)
