"""The asyncio client: the same operations as ``Client``, awaited. It sends the calls of
``_operations`` with ``httpx.AsyncClient``, sleeps between retries with ``asyncio.sleep`` and
heartbeats a lease from a task."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any, TypeVar

import httpx

from ironclaw_client import _core, _events, _operations, models
from ironclaw_client._automation import AsyncAutomationMethods
from ironclaw_client._core import MAX_WAIT_SECONDS, Call
from ironclaw_client._events import STREAM_READ_TIMEOUT_SECONDS, StreamEvent
from ironclaw_client.errors import ApiError, IronclawError, TransportError

T = TypeVar("T")


class AsyncClient(_core.ClientSettings[httpx.AsyncClient], AsyncAutomationMethods):
    """``Client``'s twin for asyncio: the same methods, constructor and retries, over one
    ``httpx.AsyncClient``; calls are awaited, iterators are async iterators, ``keep_alive`` is
    an ``async with`` and ``close`` is awaited (or use ``async with AsyncClient(...)``)."""

    def _open_http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout)

    async def close(self) -> None:
        """Close the connection pool, unless the caller passed it in (``http=``)."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _send(self, call: Call[T]) -> T:
        attempts = _core.Attempts(self.retry, call)
        while True:
            try:
                return _core.decode(await self._http.send(self._request(call)), call)
            except (ApiError, httpx.TransportError) as error:
                delay = attempts.wait_after(error)
            await asyncio.sleep(delay)

    async def _items(self, stream: _operations.Stream[T]) -> AsyncGenerator[T, None]:
        while (call := stream.next_call()) is not None:
            try:
                page = await self._send(call)
            except IronclawError as error:
                wait = stream.after_failure(error)
                if wait is None:
                    raise
                await asyncio.sleep(wait)
                continue
            for item in stream.take(page):
                yield item

    async def _follow_events(
        self, follow: _events.EventFollow
    ) -> AsyncGenerator[StreamEvent, None]:
        while not follow.over:
            try:
                response = await self._http.send(self._request(follow.call()), stream=True)
            except httpx.TransportError as error:
                follow.failed(error)
            else:
                try:
                    # Closed here, as ``yield from`` would: not whenever the loop finalizes it.
                    async with contextlib.aclosing(
                        self._connection_events(follow, response)
                    ) as events:
                        async for event in events:
                            yield event
                finally:
                    await response.aclose()
            if not follow.over:
                await asyncio.sleep(follow.delay())

    async def _connection_events(
        self, follow: _events.EventFollow, response: httpx.Response
    ) -> AsyncGenerator[StreamEvent, None]:
        try:
            if not follow.opened(response):
                await response.aread()
                follow.refused(response)
                return
            async for chunk in response.aiter_bytes():
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
                thread = await self._send(check)
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
    ) -> AsyncGenerator[StreamEvent, None]:
        """``Client.stream_events`` as an async iterator (``aclose()`` it to stop early)."""
        return self._follow_events(
            _events.EventFollow(
                conversation_id,
                thread_id,
                after=after,
                policy=self.retry,
                read_timeout=read_timeout,
            )
        )

    async def me(self) -> models.MeOutput:
        """``GET /api/v1/me``: the user the key acts for, and whether it is a service key."""
        return await self._send(_operations.me())

    async def send_message(
        self, channel: str, content: str, *, scope: str | None = None
    ) -> models.MessageCreateOutput:
        """Post a user message; retried under one idempotency key, so it is stored once."""
        return await self._send(_operations.send_message(channel, content, scope=scope))

    def conversations(
        self, *, channel: str | None = None, page_size: int | None = None
    ) -> AsyncIterator[models.Conversation]:
        """Every conversation, newest first, across pages."""
        return self._items(_operations.conversations(channel=channel, page_size=page_size))

    async def new_conversation(
        self, channel: str, *, scope: str | None = None
    ) -> models.Conversation:
        """Start an empty conversation in ``channel``; later messages to the channel go to it."""
        return await self._send(_operations.new_conversation(channel, scope=scope))

    async def get_conversation(self, conversation_id: str) -> models.ConversationDetailOutput:
        """The conversation with its active threads."""
        return await self._send(_operations.get_conversation(conversation_id))

    async def clear_conversation(self, conversation_id: str) -> models.ConversationClearOutput:
        """Delete the conversation's entries; retried under one idempotency key."""
        return await self._send(_operations.clear_conversation(conversation_id))

    async def set_busy_policy(
        self, conversation_id: str, busy_policy: models.BusyPolicyEnum | None
    ) -> models.Conversation:
        """What a message does while a thread runs: inject, queue, reject or interrupt."""
        return await self._send(_operations.set_busy_policy(conversation_id, busy_policy))

    def entries(
        self,
        conversation_id: str,
        *,
        after_seq: int = 0,
        page_size: int | None = None,
        sender: models.SenderEnum | None = None,
    ) -> AsyncIterator[models.Entry]:
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
        stop: asyncio.Event | None = None,
        sender: models.SenderEnum | None = None,
    ) -> AsyncIterator[models.Entry]:
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

    async def wait_for_reply(
        self, conversation_id: str, *, after_seq: int = 0, timeout: float = 60.0
    ) -> models.Entry:
        """The first agent entry after ``after_seq``; ``TimeoutError`` after ``timeout`` s."""
        replies = _operations.AgentReplies(conversation_id, after_seq=after_seq, timeout=timeout)
        # Closed here, not whenever the event loop finalizes an abandoned async generator.
        async with contextlib.aclosing(self._items(replies)) as agent_entries:
            return await anext(agent_entries)

    async def next_thread(
        self, worker_id: str, *, wait_seconds: float = 0, lease_seconds: int | None = None
    ) -> models.ThreadNextOutput | None:
        """Claim the oldest waiting thread (any tenant's for a service key without a user)."""
        return await self._send(
            _operations.next_thread(
                worker_id, wait_seconds=wait_seconds, lease_seconds=lease_seconds
            )
        )

    async def get_thread(self, thread_id: str) -> models.Thread:
        """The thread: its state, lease, usage counters and outcome."""
        return await self._send(_operations.get_thread(thread_id))

    async def claim_thread(
        self, thread_id: str, worker_id: str, *, lease_seconds: int | None = None
    ) -> models.Thread:
        """Take the lease; retried freely, as the holder claiming again keeps its lease."""
        return await self._send(
            _operations.claim_thread(thread_id, worker_id, lease_seconds=lease_seconds)
        )

    async def heartbeat(
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
        return await self._send(
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
    ) -> AsyncLease:
        """An ``async with`` block's ``AsyncLease``: a task heartbeats while the block runs."""
        return AsyncLease(
            self,
            thread_id,
            worker_id,
            interval=interval,
            lease_seconds=lease_seconds,
            lease_epoch=lease_epoch,
        )

    async def suspend_thread(
        self, thread_id: str, worker_id: str, *, lease_epoch: int | None = None
    ) -> models.Thread:
        """Park the running thread and give up its lease; the next user message resumes it."""
        return await self._send(
            _operations.suspend_thread(thread_id, worker_id, lease_epoch=lease_epoch)
        )

    async def take_inbox(
        self, thread_id: str, worker_id: str, *, lease_epoch: int | None = None
    ) -> list[models.Entry]:
        """The thread's undelivered user messages, each handed out once."""
        return await self._send(
            _operations.take_inbox(thread_id, worker_id, lease_epoch=lease_epoch)
        )

    async def record_outcome(
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
        return await self._send(
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

    async def write_checkpoint(
        self, thread_id: str, worker_id: str, content: str, *, lease_epoch: int
    ) -> models.WorkspaceDocument:
        """Write the thread's checkpoint under the lease of epoch ``lease_epoch`` (the claim's
        ``claim_count``); once anyone has claimed the thread since, ``Conflict`` ``lease_lost``."""
        return await self._send(
            _operations.write_checkpoint(thread_id, worker_id, content, lease_epoch=lease_epoch)
        )

    async def publish_delta(
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
        return await self._send(
            _operations.publish_delta(
                thread_id,
                worker_id=worker_id,
                lease_epoch=lease_epoch,
                step=step,
                text=text,
                offset=offset,
            )
        )

    async def read_document(self, path: str) -> models.WorkspaceDocument:
        """The workspace document at ``path``, with its content and metadata."""
        return await self._send(_operations.read_document(path))

    async def write_document(
        self, path: str, content: str, *, metadata: Mapping[str, Any] | None = None
    ) -> models.WorkspaceDocument:
        """Create or replace the document at ``path``; the old content stays as a version."""
        return await self._send(_operations.write_document(path, content, metadata=metadata))

    async def delete_document(self, path: str) -> None:
        """Delete; a retry after an attempt that took effect raises ``NotFound``."""
        return await self._send(_operations.delete_document(path))

    async def append_document(self, path: str, content: str) -> models.WorkspaceDocument:
        """Add ``content`` to the document's end; retried under one idempotency key."""
        return await self._send(_operations.append_document(path, content))

    async def patch_document(
        self, path: str, old: str, new: str, *, replace_all: bool = False
    ) -> models.WorkspacePatchResult:
        """Replace ``old`` by ``new`` in the document (every occurrence with ``replace_all``)."""
        return await self._send(_operations.patch_document(path, old, new, replace_all=replace_all))

    def document_versions(
        self, path: str, *, page_size: int | None = None
    ) -> AsyncIterator[models.WorkspaceVersion]:
        """The document's versions, newest first, across pages."""
        return self._items(_operations.document_versions(path, page_size=page_size))

    async def document_version(self, path: str, version: int) -> models.WorkspaceVersionDetail:
        """Version ``version`` of the document, with its content."""
        return await self._send(_operations.document_version(path, version))

    async def restore_document(self, path: str, version: int) -> models.WorkspaceDocument:
        """Write version ``version``'s content back as the document's newest version."""
        return await self._send(_operations.restore_document(path, version))

    def list_folder(
        self, path: str = "", *, page_size: int | None = None
    ) -> AsyncIterator[models.WorkspaceListEntry]:
        """The folder's immediate children (folders are derived from document paths)."""
        return self._items(_operations.list_folder(path, page_size=page_size))

    def tree(
        self, path: str = "", *, page_size: int | None = None
    ) -> AsyncIterator[models.WorkspaceTreeEntry]:
        """Every document at or below ``path``, in path order."""
        return self._items(_operations.tree(path, page_size=page_size))

    async def search(
        self,
        query: str,
        *,
        limit: int | None = None,
        mode: models.ModeEnum | None = None,
        min_score: float | None = None,
    ) -> models.WorkspaceSearchResponse:
        """The documents matching ``query``, best first (``mode``: hybrid, fts or vector)."""
        return await self._send(
            _operations.search(query, limit=limit, mode=mode, min_score=min_score)
        )


class AsyncLease(_core.LeaseState[AsyncClient]):
    """Heartbeats a thread every ``interval`` seconds from an asyncio task while the ``async
    with`` block runs. ``cancel_requested`` reports an interrupt; ``lost`` is set (and the
    heartbeats stop) when the lease was taken away (409 ``lease_not_held``)."""

    _task: asyncio.Task[None]

    async def __aenter__(self) -> AsyncLease:
        self._task = asyncio.create_task(self._run(), name=f"lease-{self.thread_id}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                thread = await self.client.heartbeat(
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
