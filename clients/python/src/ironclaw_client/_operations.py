"""Every operation of the API, described once for ``Client`` and ``AsyncClient``: its method,
URL, query, body, whether repeating it is safe, and how its answer or its pages are read. A
function returns the ``Call`` of a single request; a ``Stream`` yields the calls of a paginated
list or of a loop of long-polls, and takes the items out of each answer. No I/O happens here."""

from __future__ import annotations

import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, Generic, Protocol, TypeVar, cast
from urllib.parse import quote

from ironclaw_client import models
from ironclaw_client._core import API, MAX_WAIT_SECONDS, Call
from ironclaw_client.errors import InvalidArgument, IronclawError, TransportError, Unavailable

# A stream following a conversation asks again after an outage this long, doubling up to the max.
OUTAGE_WAIT_INITIAL_S = 0.5
OUTAGE_WAIT_MAX_S = 10.0

T = TypeVar("T")
Page = dict[str, Any]

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
    ("GET", "/api/v1/conversations/{conversation_id}/events"): "stream_events",
    ("POST", "/api/v1/threads/next"): "next_thread",
    ("GET", "/api/v1/threads/{thread_id}"): "get_thread",
    ("POST", "/api/v1/threads/{thread_id}/claim"): "claim_thread",
    ("POST", "/api/v1/threads/{thread_id}/heartbeat"): "heartbeat",
    ("POST", "/api/v1/threads/{thread_id}/suspend"): "suspend_thread",
    ("POST", "/api/v1/threads/{thread_id}/inbox"): "take_inbox",
    ("POST", "/api/v1/threads/{thread_id}/outcome"): "record_outcome",
    ("PUT", "/api/v1/threads/{thread_id}/checkpoint"): "write_checkpoint",
    ("POST", "/api/v1/threads/{thread_id}/deltas"): "publish_delta",
    ("GET", "/api/v1/threads/{thread_id}/events"): "stream_events",
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


def document_url(path: str, suffix: str = "") -> str:
    # Slashes stay: a document path is a folder path. Everything else is percent-encoded. A "." or
    # ".." segment is refused, not sent: the HTTP client would resolve it and the call would reach
    # another endpoint with this key (read_document("../../conversations") lists conversations).
    segments = path.strip("/").split("/")
    if not path.strip("/") or any(segment in {".", ".."} for segment in segments):
        raise InvalidArgument(
            f"document path {path!r} is empty or has '.' or '..' segments; name the document "
            "by its path from the workspace root"
        )
    try:
        quoted = quote(path, safe="/")
    except UnicodeEncodeError as error:
        raise InvalidArgument(f"document path {path!r} is not valid Unicode text") from error
    return f"{API}/workspace/documents/{quoted}{suffix}"


def compact(values: Mapping[str, Any]) -> dict[str, Any]:
    """The fields the caller set (None means "not sent", so server defaults apply)."""
    return {name: value for name, value in values.items() if value is not None}


def clamp_wait(wait_seconds: float) -> float:
    return min(max(wait_seconds, 0.0), MAX_WAIT_SECONDS)


class Stream(ABC, Generic[T]):
    """Items read by a run of calls: the client sends ``next_call()`` until it is None and
    yields what ``take`` finds in each answer."""

    @abstractmethod
    def next_call(self) -> Call[Page] | None: ...

    @abstractmethod
    def take(self, page: Page) -> list[T]: ...

    def after_failure(self, error: IronclawError) -> float | None:
        """Seconds to wait before asking again after ``error`` (its retries spent), or None to
        raise it. A list raises; a stream that follows a conversation rides out outages."""
        return None


class Pages(Stream[T]):
    """A paginated list, page by page along each page's ``next`` link."""

    def __init__(self, first: Call[Page]):
        self._next: Call[Page] | None = first

    def next_call(self) -> Call[Page] | None:
        return self._next

    def take(self, page: Page) -> list[T]:
        self._next = Call("GET", page["next"], idempotent=True) if page.get("next") else None
        return cast(list[T], page["results"])


class StopSignal(Protocol):
    def is_set(self) -> bool: ...


class NewEntries(Stream[models.Entry]):
    """A conversation's entries after ``after_seq`` as they are written (only ``sender``'s, when
    given): long-polls of ``wait_seconds``, each asking for the entries after the last one seen,
    until ``stop`` is set."""

    def __init__(
        self,
        conversation_id: str,
        *,
        after_seq: int,
        wait_seconds: float,
        stop: StopSignal | None,
        sender: models.SenderEnum | None = None,
    ):
        self.conversation_id = conversation_id
        self.after_seq = after_seq
        self.wait_seconds = wait_seconds
        self.stop = stop
        self.sender = sender
        self.outage_wait = OUTAGE_WAIT_INITIAL_S

    def after_failure(self, error: IronclawError) -> float | None:
        # A server restart or a database outage outlasts any retry budget; reading again from
        # the last entry seen loses nothing and repeats nothing, so the stream waits it out.
        if not isinstance(error, Unavailable | TransportError):
            return None
        wait, self.outage_wait = self.outage_wait, min(self.outage_wait * 2, OUTAGE_WAIT_MAX_S)
        return wait

    def next_call(self) -> Call[Page] | None:
        if self.stop is not None and self.stop.is_set():
            return None
        return self._long_poll(self.wait_seconds)

    def _long_poll(self, wait_seconds: float) -> Call[Page]:
        wait_seconds = clamp_wait(wait_seconds)
        return Call(
            "GET",
            f"{API}/conversations/{self.conversation_id}/entries",
            idempotent=True,
            params=compact(
                {"after_seq": self.after_seq, "wait_seconds": wait_seconds, "sender": self.sender}
            ),
            wait_seconds=wait_seconds,
        )

    def take(self, page: Page) -> list[models.Entry]:
        self.outage_wait = OUTAGE_WAIT_INITIAL_S
        entries = cast(list[models.Entry], page["results"])
        for entry in entries:
            self.after_seq = max(self.after_seq, entry["seq"])
        if self.sender is not None:
            # A server older than the sender filter answers with every entry.
            return [entry for entry in entries if entry["sender"] == self.sender]
        return entries


class AgentReplies(NewEntries):
    """The agent's entries after ``after_seq``, long-polling until ``timeout`` seconds from now
    have passed; then the next call raises ``TimeoutError``. The server waits for an agent entry
    (``sender=agent``), so a reply costs one long-poll however many system entries precede it."""

    def __init__(self, conversation_id: str, *, after_seq: int, timeout: float):
        super().__init__(
            conversation_id,
            after_seq=after_seq,
            wait_seconds=MAX_WAIT_SECONDS,
            stop=None,
            sender="agent",
        )
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout

    def next_call(self) -> Call[Page]:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no agent reply in {self.conversation_id} within {self.timeout} s")
        return self._long_poll(min(remaining, MAX_WAIT_SECONDS))


def new_key() -> str:
    """An ``Idempotency-Key`` for one logical call: every retry of that call sends it."""
    return str(uuid.uuid4())


def me() -> Call[models.MeOutput]:
    return Call("GET", f"{API}/me", idempotent=True)


def send_message(
    channel: str, content: str, *, scope: str | None
) -> Call[models.MessageCreateOutput]:
    # Repeated after an ambiguous failure under its idempotency key: stored once.
    body = compact({"channel": channel, "content": content, "scope": scope})
    return Call("POST", f"{API}/messages", idempotent=False, body=body, idempotency_key=new_key())


def conversations(*, channel: str | None, page_size: int | None) -> Pages[models.Conversation]:
    params = compact({"channel": channel, "limit": page_size})
    return Pages(Call("GET", f"{API}/conversations", idempotent=True, params=params))


def new_conversation(channel: str, *, scope: str | None) -> Call[models.Conversation]:
    body = compact({"channel": channel, "scope": scope})
    url = f"{API}/conversations/new"
    return Call("POST", url, idempotent=False, body=body, idempotency_key=new_key())


def get_conversation(conversation_id: str) -> Call[models.ConversationDetailOutput]:
    return Call("GET", f"{API}/conversations/{conversation_id}", idempotent=True)


def clear_conversation(conversation_id: str) -> Call[models.ConversationClearOutput]:
    # A repeat without the key would clear the messages sent in between.
    url = f"{API}/conversations/{conversation_id}/clear"
    return Call("POST", url, idempotent=False, idempotency_key=new_key())


def set_busy_policy(
    conversation_id: str, busy_policy: models.BusyPolicyEnum | None
) -> Call[models.Conversation]:
    body = {"busy_policy": busy_policy}
    return Call("POST", f"{API}/conversations/{conversation_id}/policy", idempotent=True, body=body)


def entries(
    conversation_id: str,
    *,
    after_seq: int,
    page_size: int | None,
    sender: models.SenderEnum | None = None,
) -> Pages[models.Entry]:
    # The next links carry the sender on: the server keeps a page's query in them.
    params = compact({"after_seq": after_seq, "limit": page_size, "sender": sender})
    url = f"{API}/conversations/{conversation_id}/entries"
    return Pages(Call("GET", url, idempotent=True, params=params))


def next_thread(
    worker_id: str, *, wait_seconds: float, lease_seconds: int | None
) -> Call[models.ThreadNextOutput | None]:
    """Repeated after an ambiguous failure under its idempotency key: a claim whose answer was
    lost is answered again with the same thread, instead of leaving it leased to nobody."""
    wait_seconds = clamp_wait(wait_seconds)
    body = compact(
        {"worker_id": worker_id, "wait_seconds": wait_seconds, "lease_seconds": lease_seconds}
    )
    return Call(
        "POST",
        f"{API}/threads/next",
        idempotent=False,
        body=body,
        wait_seconds=wait_seconds,
        expected_empty=frozenset({204}),
        idempotency_key=new_key(),
    )


def get_thread(thread_id: str) -> Call[models.Thread]:
    return Call("GET", f"{API}/threads/{thread_id}", idempotent=True)


def claim_thread(
    thread_id: str, worker_id: str, *, lease_seconds: int | None
) -> Call[models.Thread]:
    # Repeated freely: the lease holder claiming again keeps its lease.
    body = compact({"worker_id": worker_id, "lease_seconds": lease_seconds})
    return Call("POST", f"{API}/threads/{thread_id}/claim", idempotent=True, body=body)


def heartbeat(
    thread_id: str,
    worker_id: str,
    *,
    lease_seconds: int | None,
    usage: Mapping[str, Any] | None,
    lease_epoch: int | None = None,
) -> Call[models.Thread]:
    # Usage adds to the thread's counters: a heartbeat with usage is repeated after an ambiguous
    # failure only under its idempotency key, which counts it once.
    body = compact(
        {
            "worker_id": worker_id,
            "lease_seconds": lease_seconds,
            "usage": dict(usage) if usage else None,
            "lease_epoch": lease_epoch,
        }
    )
    url = f"{API}/threads/{thread_id}/heartbeat"
    key = new_key() if usage else None
    return Call("POST", url, idempotent=not usage, body=body, idempotency_key=key)


def suspend_thread(
    thread_id: str, worker_id: str, *, lease_epoch: int | None = None
) -> Call[models.Thread]:
    # Without the key, a repeat would answer lease_not_held.
    body = compact({"worker_id": worker_id, "lease_epoch": lease_epoch})
    url = f"{API}/threads/{thread_id}/suspend"
    return Call("POST", url, idempotent=False, body=body, idempotency_key=new_key())


def take_inbox(
    thread_id: str, worker_id: str, *, lease_epoch: int | None = None
) -> Call[list[models.Entry]]:
    # Messages are handed out once: a repeat under the same key gets the same ones back.
    body = compact({"worker_id": worker_id, "lease_epoch": lease_epoch})
    return Call(
        "POST",
        f"{API}/threads/{thread_id}/inbox",
        idempotent=False,
        body=body,
        answer_field="entries",
        idempotency_key=new_key(),
    )


def record_outcome(
    thread_id: str,
    worker_id: str,
    kind: models.ThreadOutcomeInputKindEnum,
    *,
    response: str | None,
    error: str | None,
    gate: Mapping[str, str] | None,
    usage: Mapping[str, Any] | None,
    lease_epoch: int | None = None,
) -> Call[models.ThreadOutcomeOutput]:
    # Without the key, a repeat would answer outcome_already_recorded.
    body = compact(
        {
            "worker_id": worker_id,
            "kind": kind,
            "response": response,
            "error": error,
            "gate": dict(gate) if gate else None,
            "usage": dict(usage) if usage else None,
            "lease_epoch": lease_epoch,
        }
    )
    url = f"{API}/threads/{thread_id}/outcome"
    return Call("POST", url, idempotent=False, body=body, idempotency_key=new_key())


def write_checkpoint(
    thread_id: str, worker_id: str, content: str, *, lease_epoch: int
) -> Call[models.WorkspaceDocument]:
    # Repeated freely: the same content again, and once the lease is lost, lease_lost.
    body = {"worker_id": worker_id, "content": content, "lease_epoch": lease_epoch}
    return Call("PUT", f"{API}/threads/{thread_id}/checkpoint", idempotent=True, body=body)


def publish_delta(
    thread_id: str,
    *,
    worker_id: str,
    lease_epoch: int,
    step: int,
    text: str,
    offset: int = 0,
) -> Call[int]:
    # Repeated freely: a listener applies buf[:offset] + text, so the same delta twice is one.
    body = {
        "worker_id": worker_id,
        "lease_epoch": lease_epoch,
        "step": step,
        "text": text,
        "offset": offset,
    }
    return Call(
        "POST",
        f"{API}/threads/{thread_id}/deltas",
        idempotent=True,
        body=body,
        answer_field="published",
    )


def read_document(path: str) -> Call[models.WorkspaceDocument]:
    return Call("GET", document_url(path), idempotent=True)


def write_document(
    path: str, content: str, *, metadata: Mapping[str, Any] | None
) -> Call[models.WorkspaceDocument]:
    body = compact({"content": content, "metadata": dict(metadata) if metadata else None})
    return Call("PUT", document_url(path), idempotent=True, body=body)


def delete_document(path: str) -> Call[None]:
    # Repeated freely: a repeat after an attempt that took effect raises NotFound.
    return Call("DELETE", document_url(path), idempotent=True, expected_empty=frozenset({204}))


def append_document(path: str, content: str) -> Call[models.WorkspaceDocument]:
    body = {"content": content}
    url = document_url(path, "/append")
    return Call("POST", url, idempotent=False, body=body, idempotency_key=new_key())


def patch_document(
    path: str, old: str, new: str, *, replace_all: bool
) -> Call[models.WorkspacePatchResult]:
    body = {"old": old, "new": new, "replace_all": replace_all}
    url = document_url(path, "/patch")
    return Call("POST", url, idempotent=False, body=body, idempotency_key=new_key())


def document_versions(path: str, *, page_size: int | None) -> Pages[models.WorkspaceVersion]:
    params = compact({"limit": page_size})
    return Pages(Call("GET", document_url(path, "/versions"), idempotent=True, params=params))


def document_version(path: str, version: int) -> Call[models.WorkspaceVersionDetail]:
    return Call("GET", document_url(path, f"/versions/{int(version)}"), idempotent=True)


def restore_document(path: str, version: int) -> Call[models.WorkspaceDocument]:
    # Writes version n back: a repeat without the key would add another version.
    url = document_url(path, f"/versions/{int(version)}/restore")
    return Call("POST", url, idempotent=True, idempotency_key=new_key())


def list_folder(path: str, *, page_size: int | None) -> Pages[models.WorkspaceListEntry]:
    params = compact({"path": path, "limit": page_size})
    return Pages(Call("GET", f"{API}/workspace/list", idempotent=True, params=params))


def tree(path: str, *, page_size: int | None) -> Pages[models.WorkspaceTreeEntry]:
    params = compact({"path": path, "limit": page_size})
    return Pages(Call("GET", f"{API}/workspace/tree", idempotent=True, params=params))


def search(
    query: str, *, limit: int | None, mode: models.ModeEnum | None, min_score: float | None
) -> Call[models.WorkspaceSearchResponse]:
    # A read, though it is a POST.
    body = compact({"query": query, "limit": limit, "mode": mode, "min_score": min_score})
    return Call("POST", f"{API}/workspace/search", idempotent=True, body=body)
