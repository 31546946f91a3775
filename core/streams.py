"""Server-Sent Events served by one event loop per web process, not by request threads.

A request thread answering ``GET .../events`` does what any view does (authentication, the
replay read) and then hands its connection to this process's hub: from then on an open stream
costs a socket and a few objects, no request thread and no database connection, so thousands
fit in one process. The hub is an asyncio loop in a daemon thread, started on first use.

A view (``conversations.stream_requests.stream_open``) takes one of its key's slots
(``hub.admit``), subscribes (``hub.subscribe``), reads the replay, and hands the subscription to
the web server's offer (``core.stream_handoff``), answering ``event_stream_response(replay)``;
under another server there is no offer, and it cancels the subscription and answers the replay
alone.

Subscribing first means nothing is lost: a notification committed between the replay read and
the hand-off is kept for the source and given to it once the stream is open (the source drops
what the replay already sent). The web server (``operations.web_server``) lets the response pass
Django's middleware as usual (its headers kept, its access line a 200), then writes nothing:
if the response is a 200 it gives the hub a duplicate of the socket, the response's head and
its body (the replay, the stream's first bytes), and forgets the connection. Any other response
(an error a middleware made of it, HEAD) is written as usual and the subscription cancelled.

The hub then serves the stream: each notification of one of the source's topics goes to
``source.notified`` on the loop thread; reads it asks for run on ``STREAM_READ_THREADS``
threads, one at a time per stream (one asked for meanwhile runs once more after), each thread
returning its database connection after every read. Whenever the notification listener
(re)connects every stream reads again, since notifications may have been lost meanwhile. A
``: keep-alive`` comment goes every ``STREAM_KEEPALIVE_SECONDS``; a stream ends after
``STREAM_MAX_SECONDS`` (less up to 10 % at random, so reconnections do not come in waves), or when
its source is done, and its client reconnects with its cursor. A client that reads too slowly
(more than ``STREAM_BUFFER_BYTES`` unsent beyond the first bytes) is cut off and resumes from its
cursor too. A client that hangs up is seen at once (its socket is read), and its stream, key slot
and subscriptions go. A source that raises ends its own stream, never the hub.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Protocol

from django.conf import settings
from django.db import connection

from core import notify
from core.metrics import STREAM_FRAMES_SENT, STREAMS_CLOSED, STREAMS_OPEN

logger = logging.getLogger(__name__)

KEEPALIVE = b": keep-alive\n\n"
# Notifications kept for a stream not open yet; past them one read stands for them all.
PENDING_MAX = 64
# What a client may send after its request before it is cut off.
RECEIVED_MAX_BYTES = 64 * 1024
# How long a stopping hub waits for its streams' last bytes to leave.
SHUTDOWN_FLUSH_S = 1.0
# Ended without the last chunk: the client is gone or would not read.
ABRUPT_REASONS = frozenset({"client", "slow"})

PENDING, ADOPTED, OPEN, CLOSED = "pending", "adopted", "open", "closed"


class StreamSource(Protocol):
    """One open stream's logic. Every method is called on the hub's loop thread, one call at a
    time, except the callable ``read_plan`` returns, which runs on a database thread. Whatever a
    notification could bring, a read must bring too: the hub reads instead when notifications
    may have been lost."""

    @property
    def topics(self) -> tuple[tuple[str, str], ...]:
        """The (channel, key) pairs it listens to (``notify.ANY``: every key of a channel); read
        once, when the stream subscribes. A plain attribute will do."""
        ...

    def notified(
        self, channel: str, key: str, data: dict[str, Any] | None
    ) -> tuple[list[bytes], bool]:
        """Frames to send now, and whether the database must be read (a gap, no data)."""
        ...

    def read_plan(self) -> Callable[[], object]:
        """A function to run on a database thread, capturing what it needs now (the cursor)."""
        ...

    def read_done(self, result: object) -> tuple[list[bytes], bool]:
        """Frames from that read's result (less what was sent meanwhile), and whether to read
        again at once (the read stopped at its page size)."""
        ...

    def done(self) -> bool:
        """True once the stream has sent all it ever will (the hub then ends it cleanly)."""
        ...


def _read_run(plan: Callable[[], object]) -> object:
    try:
        return plan()
    finally:
        # The thread holds no connection while it waits for the next read.
        connection.close()


class Subscription(asyncio.Protocol):
    """One stream, from its early subscription to its end; ``hub.subscribe`` makes it.

    The request thread owns it until ``adopt`` (or ``cancel``), the hub's loop afterwards."""

    def __init__(self, hub: Hub, source: StreamSource, key: str):
        self.hub = hub
        self.source = source
        self.key = key
        self.state = PENDING
        self._pending: list[tuple[str, str, dict[str, Any] | None]] = []
        self._read_wanted = False
        self._reading = False
        self._read_again = False
        # The client is behind (asyncio paused our writing): a read asked for meanwhile waits
        # until it catches up, so a stream catching up queues one page at a time.
        self._paused = False
        self._read_deferred = False
        self._received = 0
        self._transport: asyncio.Transport | None = None
        self._chunked = False
        self._allowance = 0
        self._timers: list[asyncio.TimerHandle] = []
        self._unsubscribes: list[Callable[[], None]] = []
        self._read_after: float | None = None

    def _subscribe(self) -> None:
        for channel, key in self.source.topics:
            self._unsubscribes.append(notify.subscribe(channel, key, self._heard))

    # --- The request thread's -----------------------------------------------------------------

    def adopt(self, sock: socket.socket, head: bytes, first: bytes, *, chunked: bool) -> None:
        """Serve the stream on ``sock`` (the hub's to close): ``head`` (the response's status line
        and headers), then ``first``, then the frames, each chunk-encoded when ``chunked``."""
        assert self.state == PENDING, self.state
        self.state = ADOPTED
        self._chunked = chunked
        self.hub._adopt(self, sock, head + self._framed(first))

    def read_soon(self) -> None:
        """Read as soon as the stream is open (the replay stopped at its page size)."""
        self._read_wanted = True

    def read_after(self, seconds: float) -> None:
        """Read once more this long after the stream opens, notified or not."""
        self._read_after = seconds

    def cancel(self) -> None:
        """Give the stream up before ``adopt``: its subscriptions and key slot go (idempotent)."""
        if self.state == PENDING:
            self.state = CLOSED
            self._unsubscribe()
            self.hub._forget(self)

    # --- The loop's -----------------------------------------------------------------------------

    def _heard(self, channel: str, key: str, data: dict[str, Any] | None) -> None:
        # On the listener thread: straight on to the loop.
        self.hub._loop.call_soon_threadsafe(self._notified, channel, key, data)

    def _notified(self, channel: str, key: str, data: dict[str, Any] | None) -> None:
        if self.state in (PENDING, ADOPTED):
            if len(self._pending) < PENDING_MAX:
                self._pending.append((channel, key, data))
            else:
                self._read_wanted = True
        elif self.state == OPEN:
            with self._guarded():
                frames, read = self.source.notified(channel, key, data)
                self._emit(frames)
                if read:
                    self._read()

    def _reconnected(self) -> None:
        if self.state == OPEN:
            with self._guarded():
                self._read()
        elif self.state != CLOSED:
            self._read_wanted = True

    async def _open(self, sock: socket.socket, data: bytes) -> None:
        if self.hub._closing:
            sock.close()
            self._close("shutdown")
            return
        try:
            await self.hub._loop.connect_accepted_socket(lambda: self, sock)
        except Exception as error:
            logger.info("an event stream's connection could not be served: %s", error)
            sock.close()
            self._close("client")
            return
        if self.state != ADOPTED:
            return
        self.state = OPEN
        STREAMS_OPEN.inc()
        self._allowance = len(data)
        self._send(data, framed=True)
        if self.hub._closing:
            self._close("shutdown")
            return
        loop = self.hub._loop
        lifetime = self.hub.lifetime * random.uniform(0.9, 1.0)
        self._timers = [
            loop.call_later(self.hub.keepalive, self._keepalive),
            loop.call_later(lifetime, self._close, "lifetime"),
        ]
        if self._read_after is not None:
            self._timers.append(loop.call_later(self._read_after, self._read_late))
        pending, self._pending = self._pending, []
        for notification in pending:
            self._notified(*notification)
        with self._guarded():
            if self._read_wanted:
                self._read()
            self._emit([])

    def _read_late(self) -> None:
        if self.state == OPEN:
            with self._guarded():
                self._read()

    def _keepalive(self) -> None:
        if self.state == OPEN:
            self._send(KEEPALIVE)
            self._timers[0] = self.hub._loop.call_later(self.hub.keepalive, self._keepalive)

    def _read(self) -> None:
        if self._reading:
            self._read_again = True
            return
        if self._paused:
            self._read_deferred = True
            return
        plan = self.source.read_plan()
        self._reading = True
        future = self.hub._loop.run_in_executor(self.hub._executor, _read_run, plan)
        future.add_done_callback(self._read_finished)

    def _read_finished(self, future: asyncio.Future[object]) -> None:
        self._reading = False
        if self.state != OPEN:
            if not future.cancelled():
                future.exception()  # for nobody: not worth a "never retrieved" warning
            return
        with self._guarded():
            frames, again = self.source.read_done(future.result())
            self._emit(frames)
            if (self._read_again or again) and self.state == OPEN:
                self._read_again = False
                self._read()

    def _emit(self, frames: list[bytes]) -> None:
        if frames and self.state == OPEN:
            self._send(b"".join(frames))
            STREAM_FRAMES_SENT.inc(len(frames))
        if self.state == OPEN and self.source.done():
            self._close("done")

    def _framed(self, data: bytes) -> bytes:
        return b"%X\r\n%b\r\n" % (len(data), data) if self._chunked and data else data

    def _send(self, data: bytes, *, framed: bool = False) -> None:
        transport = self._transport
        assert transport is not None
        transport.write(data if framed else self._framed(data))
        if transport.get_write_buffer_size() > self.hub.buffer_bytes + self._allowance:
            self._close("slow")

    @contextmanager
    def _guarded(self) -> Iterator[None]:
        try:
            yield
        except Exception:
            logger.exception("event stream for key %s failed; closing it", self.key)
            self._close("error")

    def _unsubscribe(self) -> None:
        for unsubscribe in self._unsubscribes:
            unsubscribe()

    def _close(self, reason: str) -> None:
        if self.state == CLOSED:
            return
        was_open = self.state == OPEN
        self.state = CLOSED
        for timer in self._timers:
            timer.cancel()
        self._unsubscribe()
        self.hub._forget(self)
        STREAMS_CLOSED.labels(reason=reason).inc()
        transport = self._transport
        if was_open:
            STREAMS_OPEN.dec()
        if transport is None:
            return
        if reason in ABRUPT_REASONS:
            transport.abort()
            return
        if self._chunked:
            transport.write(b"0\r\n\r\n")
        transport.close()

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self.hub._transports += 1

    def data_received(self, data: bytes) -> None:
        """A client sends nothing after its request: a few bytes are dropped, a client that
        keeps sending is cut off (it would cost the loop for nothing)."""
        self._received += len(data)
        if self._received > RECEIVED_MAX_BYTES:
            self._close("client")

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._read_deferred and self.state == OPEN:
            self._read_deferred = False
            with self._guarded():
                self._read()

    def eof_received(self) -> bool:
        self._close("client")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.hub._transports -= 1
        self._close("client")


class Hub:
    """One process's streams: their key slots, their loop thread and their read threads."""

    def __init__(
        self,
        *,
        per_key: int,
        read_threads: int,
        keepalive: float,
        lifetime: float,
        buffer_bytes: int,
    ):
        self.per_key = per_key
        self.keepalive = keepalive
        self.lifetime = lifetime
        self.buffer_bytes = buffer_bytes
        self._lock = threading.Lock()
        self._admitted: Counter[str] = Counter()
        self._subscriptions: set[Subscription] = set()
        self._closing = False
        self._transports = 0
        self._executor = ThreadPoolExecutor(read_threads, thread_name_prefix="stream-read")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="streams", daemon=True)
        self._thread.start()
        self._forget_reconnect = notify.on_reconnect(self._heard_reconnect)

    @classmethod
    def from_settings(cls) -> Hub:
        return cls(
            per_key=settings.STREAMS_PER_KEY,
            read_threads=settings.STREAM_READ_THREADS,
            keepalive=settings.STREAM_KEEPALIVE_SECONDS,
            lifetime=settings.STREAM_MAX_SECONDS,
            buffer_bytes=settings.STREAM_BUFFER_BYTES,
        )

    def admit(self, key: str) -> bool:
        """Reserve one of ``key``'s stream slots; False when it has ``per_key`` already."""
        with self._lock:
            if self._admitted[key] >= self.per_key:
                return False
            self._admitted[key] += 1
            return True

    def release(self, key: str) -> None:
        """Give back a slot ``admit`` reserved, when no subscription took it over."""
        with self._lock:
            self._admitted[key] -= 1
            if self._admitted[key] <= 0:
                del self._admitted[key]

    def admitted(self, key: str) -> int:
        with self._lock:
            return self._admitted[key]

    def subscribe(self, source: StreamSource, key: str) -> Subscription:
        """Listen to ``source.topics`` from now on, for a stream that takes over ``key``'s slot
        (reserved with ``admit``): call it before the replay read."""
        subscription = Subscription(self, source, key)
        # Known to the hub first: a reconnection from now on has it read.
        with self._lock:
            self._subscriptions.add(subscription)
        try:
            subscription._subscribe()
        except BaseException:
            subscription.cancel()
            raise
        return subscription

    def sources(self) -> list[StreamSource]:
        """The sources of the streams subscribed and not ended yet."""
        with self._lock:
            return [subscription.source for subscription in self._subscriptions]

    @property
    def open_count(self) -> int:
        """Streams being served (handed off, not ended yet)."""
        with self._lock:
            return sum(1 for subscription in self._subscriptions if subscription.state == OPEN)

    def close(self, timeout: float = 2 * SHUTDOWN_FLUSH_S) -> None:
        """End every stream (its clients reconnect elsewhere) and stop, waiting up to
        ``timeout`` seconds; with 0, start that and return (a signal handler's call)."""
        with self._lock:
            first, self._closing = not self._closing, True
        if first:
            self._forget_reconnect()
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        self._thread.join(timeout)

    def _adopt(self, subscription: Subscription, sock: socket.socket, data: bytes) -> None:
        asyncio.run_coroutine_threadsafe(subscription._open(sock, data), self._loop)

    def _forget(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions.discard(subscription)
        self.release(subscription.key)

    def _heard_reconnect(self) -> None:
        self._loop.call_soon_threadsafe(self._reconnected)

    def _reconnected(self) -> None:
        with self._lock:
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            subscription._reconnected()

    async def _shutdown(self) -> None:
        with self._lock:
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            if subscription.state == OPEN:
                subscription._close("shutdown")
        # The last chunks leave while the transports close; a client that does not read is
        # not waited for.
        deadline = self._loop.time() + SHUTDOWN_FLUSH_S
        while self._transports and self._loop.time() < deadline:
            await asyncio.sleep(0.02)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._loop.stop()


_hub: Hub | None = None
_hub_lock = threading.Lock()


def hub() -> Hub:
    """This process's hub, started on first use from the settings."""
    global _hub
    with _hub_lock:
        # A stopping hub stays: a stream handed to it now ends at once, its client reconnects.
        if _hub is None:
            _hub = Hub.from_settings()
        return _hub


def shutdown(timeout: float = 2 * SHUTDOWN_FLUSH_S) -> None:
    """End this process's streams, if it has any (the web server's stop)."""
    with _hub_lock:
        current = _hub
    if current is not None:
        current.close(timeout)
