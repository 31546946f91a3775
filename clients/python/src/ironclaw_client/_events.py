"""Event streams (``GET .../events``, Server-Sent Events) for ``Client`` and ``AsyncClient``: the
parser, the events it yields, and what a stream decides between connections (which request to
send, when to reconnect, when it is over). No I/O happens here: the clients send, read and
sleep."""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass, field
from typing import Any

import httpx

from ironclaw_client._core import API, Call, RetryPolicy, retry_after_seconds
from ironclaw_client.errors import ApiError, InvalidArgument, TransportError, error_for

# A thread event of one of these types is its thread's last: a thread stream ends after it.
FINAL_THREAD_EVENTS = frozenset({"completed", "failed", "stopped"})
# The server sends a keep-alive every STREAM_KEEPALIVE_SECONDS (15 by default): a connection
# silent for this long is dead (a vanished host, a lost route) and is replaced.
STREAM_READ_TIMEOUT_SECONDS = 45.0
# How long to wait before reconnecting until the server says (its ``retry`` field).
DEFAULT_RETRY_MS = 1000
# Answers after which the stream connects again (after Retry-After, or the backoff).
RETRIED_STATUSES = frozenset({429, 502, 503, 504})
_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class StreamEvent:
    """One event of a stream.

    ``event``: ``entry`` (a conversation entry, as the entries endpoint shows it), ``thread``
    (a thread event: ``type``, ``seq``, the thread's ``state`` and ``usage`` after it) or
    ``delta`` (a model step's text as it is produced: ``thread_id``, ``step``, ``offset``,
    ``text``; see ``DeltaText``). ``id``: the stream's cursor after this event, for durable
    events (entries, thread events); None for deltas, which are never replayed. ``data``: the
    JSON object the event carries (``{}`` if it is not one; ``raw`` is its text as sent)."""

    event: str
    data: dict[str, Any]
    id: str | None = None
    raw: str = ""

    @property
    def final(self) -> bool:
        """A thread event that ends its thread (completed, failed or stopped)."""
        return self.event == "thread" and self.data.get("type") in FINAL_THREAD_EVENTS


class SseParser:
    """Server-Sent Events as the WHATWG HTML standard parses them: UTF-8 (a leading BOM
    dropped, invalid bytes replaced), lines ending in CRLF, LF or CR, ``:`` comments, fields
    ``event``, ``data`` (several lines join with LF), ``id`` (kept across events; one holding
    NUL is ignored) and ``retry`` (digits only). An event is dispatched at a blank line; one
    cut off by the connection's end is dropped. ``reset`` starts a new connection's bytes and
    keeps ``last_event_id`` and ``retry_ms``."""

    def __init__(self, last_event_id: str = "") -> None:
        self.last_event_id = last_event_id
        self.retry_ms: int | None = None
        self.reset()

    def reset(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
        self._partial = ""
        self._skip_lf = False
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        """The events completed by ``chunk`` (any slice of the bytes, however cut)."""
        text = self._decoder.decode(chunk)
        if not text:
            return []
        if self._skip_lf and text.startswith("\n"):
            text = text[1:]
        # A CR ending this chunk ends its line; an LF opening the next one is the same line end.
        self._skip_lf = text.endswith("\r")
        *lines, self._partial = _LINE_END.split(self._partial + text)
        events = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> StreamEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
                self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> StreamEvent | None:
        data, event, event_id = self._data, self._event or "message", self._id
        self._data, self._event, self._id = [], "", None
        if not data:
            return None
        raw = "\n".join(data)
        try:
            decoded = json.loads(raw)
        except ValueError:
            decoded = None
        return StreamEvent(
            event=event,
            data=decoded if isinstance(decoded, dict) else {},
            id=event_id,
            raw=raw,
        )


@dataclass
class DeltaText:
    """The text of each model step so far, from ``delta`` events: ``add`` applies one
    (``text[:offset] + delta``; a delta repeated or overlapping is harmless) and returns its
    step's text so far. Deltas are not replayed: a delta whose offset lies beyond the text
    known (the ones before it were missed, e.g. while reconnecting) is skipped (``add``
    returns None) until one from an offset within it (a delta from 0 carries the whole text
    while it is small). The final reply is the agent's entry in any case. A thread's final
    event forgets its steps."""

    texts: dict[tuple[str, int], str] = field(default_factory=dict)

    def add(self, event: StreamEvent) -> str | None:
        if event.final:
            self.discard(str(event.data.get("thread_id")))
            return None
        if event.event != "delta":
            return None
        data = event.data
        if not isinstance(data.get("step"), int) or not isinstance(data.get("text"), str):
            return None
        key = (str(data.get("thread_id")), data["step"])
        offset, known = int(data.get("offset") or 0), self.texts.get(key, "")
        if offset > len(known):
            return None
        self.texts[key] = known[:offset] + data["text"]
        return self.texts[key]

    def text(self, thread_id: str, step: int) -> str:
        return self.texts.get((thread_id, step), "")

    def discard(self, thread_id: str) -> None:
        for key in [key for key in self.texts if key[0] == thread_id]:
            del self.texts[key]


class EventFollow:
    """One ``stream_events`` iteration across its connections: the request to send (with the
    last id seen as ``Last-Event-ID``), the events of each connection, and what comes after a
    connection: reconnect after the server's ``retry`` (longer, by the retry policy's backoff
    with jitter, after failures in a row), raise an error the caller must see, check a thread
    stream that closed with nothing, or stop."""

    def __init__(
        self,
        conversation_id: str | None,
        thread_id: str | None,
        *,
        after: str | int | None,
        policy: RetryPolicy,
        read_timeout: float,
    ):
        if (conversation_id is None) == (thread_id is None):
            raise InvalidArgument("stream_events takes a conversation_id or a thread_id, not both")
        self.thread_id = thread_id
        self.url = (
            f"{API}/threads/{thread_id}/events"
            if thread_id is not None
            else f"{API}/conversations/{conversation_id}/events"
        )
        self.parser = SseParser("" if after is None else str(after))
        self.policy = policy
        self.read_timeout = read_timeout
        self.failures = 0
        self.retry_after: float | None = None
        self.over = False
        # A thread stream: whether the thread had ended before this connection was opened, and
        # whether this connection sent a durable event.
        self.ended_before = False
        self.durable_seen = False
        self.reconnect_now = False

    def call(self) -> Call[Any]:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.parser.last_event_id:
            headers["Last-Event-ID"] = self.parser.last_event_id
        return Call(
            "GET", self.url, idempotent=True, headers=headers, read_timeout=self.read_timeout
        )

    def opened(self, response: httpx.Response) -> bool:
        """Whether ``response`` (its head) is the stream: then read it. Else read its body and
        call ``refused``."""
        if response.status_code != 200:
            return False
        content_type = response.headers.get("Content-Type", "")
        if not content_type.startswith("text/event-stream"):
            raise ApiError(
                status=200,
                code="not_an_event_stream",
                message=f"the answer is {content_type or 'untyped'}, not text/event-stream",
            )
        self.parser.reset()
        self.failures, self.retry_after, self.durable_seen = 0, None, False
        return True

    def refused(self, response: httpx.Response) -> None:
        """An answer other than the stream: the end (204: nothing more will come, as for an
        ended thread whose final event was seen), retried later (429, 502, 503, 504), else
        raised."""
        if response.status_code == 204:
            self.over = True
            return
        if response.status_code in RETRIED_STATUSES:
            self.failures += 1
            self.retry_after = retry_after_seconds(response)
            return
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

    def failed(self, error: httpx.TransportError) -> None:
        """No connection, or it broke: connect again."""
        if isinstance(error, httpx.LocalProtocolError | httpx.UnsupportedProtocol):
            # Our own request is malformed: sending it again fails the same way.
            raise TransportError(str(error) or type(error).__name__) from error
        self.failures += 1

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        events = self.parser.feed(chunk)
        if any(event.id is not None for event in events):
            self.durable_seen = True
        return events

    def last(self, event: StreamEvent) -> bool:
        """Whether ``event``, just yielded, ends the stream (a thread stream's final event)."""
        self.over = self.thread_id is not None and event.final
        return self.over

    def closed(self) -> Call[Any] | None:
        """The server ended a connection cleanly. A thread stream resumed after its thread's
        final event ends with nothing, as one ended by its lifetime may: the thread is asked
        for (the call returned), and if it had ended, the next connection that ends with
        nothing was the last."""
        if self.thread_id is None or self.durable_seen:
            self.ended_before = False
            return None
        if self.ended_before:
            self.over = True
            return None
        return Call("GET", f"{API}/threads/{self.thread_id}", idempotent=True)

    def thread_checked(self, thread: Any) -> None:
        """The thread as ``closed``'s call answered it (None: the call failed)."""
        # A thread's final states are named as its final events.
        self.ended_before = isinstance(thread, dict) and thread.get("state") in FINAL_THREAD_EVENTS
        # Nothing to wait for: the server ends an ended thread's stream at once.
        self.reconnect_now = self.ended_before

    def delay(self) -> float:
        """Seconds to wait before connecting again: the server's ``retry``, or the backoff
        after failures in a row (never sooner than Retry-After), capped by the policy."""
        if self.reconnect_now:
            self.reconnect_now = False
            return 0.0
        retry_ms = self.parser.retry_ms if self.parser.retry_ms is not None else DEFAULT_RETRY_MS
        wait = retry_ms / 1000
        if self.failures:
            wait = max(wait, self.policy.delay(self.failures, self.retry_after))
        return wait
