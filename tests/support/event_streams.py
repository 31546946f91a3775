"""Event streams end to end in the test process: the web server (``operations.web_server``, as
``serve`` builds it) in a thread, a Django view that hands its connection to a hub the test
made, and raw-socket clients that read the chunked stream.

The view is the shape a real ``.../events`` view has: admit the key, subscribe, read the replay
(a real statement), take the hand-off. Its source answers a notification with a JSON object by
echoing it, and one without (or the listener's reconnect) by a read whose frame says so.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlencode

from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.urls import path

from core import stream_handoff, streams
from core.notify import EVENTS_CHANNEL
from operations import web_server

URLCONF = __name__
REPLAY = b"retry: 1000\n\n: replay\n\n"
# The hub the view hands its streams to (each test makes its own).
HUBS: list[streams.Hub] = []
# Per topic: the view waits for this event after its replay read, before the hand-off.
GATES: dict[str, threading.Event] = {}
SUBSCRIPTIONS: dict[str, streams.Subscription] = {}
# The size of one page of a source's backlog (``pages``).
PAGE_BYTES = 256 * 1024


class EchoSource:
    """Echoes a notification's JSON object as a frame; reads when it has none."""

    def __init__(self, topic: str, *, done_after: int | None = None, pages: int = 0):
        self.topics = ((EVENTS_CHANNEL, topic),)
        self.cursor = 0
        self.echoed = 0
        self.done_after = done_after
        # A backlog: this many reads of PAGE_BYTES each, every one asking for the next.
        self.pages = pages

    def replay(self) -> bytes:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 0")
            (self.cursor,) = cursor.fetchone()
        return REPLAY

    def notified(
        self, channel: str, key: str, data: dict[str, Any] | None
    ) -> tuple[list[bytes], bool]:
        if data is None:
            return [], True
        if data.get("fail"):
            raise RuntimeError("a source's bug")
        self.echoed += 1
        if "size" in data:
            return [b"data: " + b"x" * int(data["size"]) + b"\n\n"], False
        return [f"data: {json.dumps(data)}\n\n".encode()], False

    def read_plan(self) -> Callable[[], object]:
        cursor = self.cursor

        def read() -> object:
            with connection.cursor() as db:
                db.execute("SELECT %s::int + 1", [cursor])
                return db.fetchone()[0]

        return read

    def read_done(self, result: object) -> tuple[list[bytes], bool]:
        assert isinstance(result, int)
        self.cursor = result
        if self.pages:
            self.pages -= 1
            page = b"data: page " + b"x" * PAGE_BYTES + b"\n\n"
            return [page, f"data: read {result}\n\n".encode()], self.pages > 0
        return [f"data: read {result}\n\n".encode()], False

    def done(self) -> bool:
        return self.done_after is not None and self.echoed >= self.done_after


def events(request: HttpRequest) -> HttpResponse:
    hub = HUBS[-1]
    key = request.GET.get("key", "key")
    topic = request.GET.get("topic", "topic")
    if not hub.admit(key):
        return HttpResponse(status=429)
    done_after = request.GET.get("done_after")
    source = EchoSource(
        topic,
        done_after=int(done_after) if done_after else None,
        pages=int(request.GET.get("pages", 0)),
    )
    subscription = hub.subscribe(source, key)
    try:
        replay = source.replay()
        SUBSCRIPTIONS[topic] = subscription
        gate = GATES.get(topic)
        if gate is not None:
            assert gate.wait(timeout=10)
    except BaseException:
        subscription.cancel()
        raise
    handoff = stream_handoff.handoff_offered(request)
    if handoff is None:
        subscription.cancel()
        return HttpResponse(replay, content_type="text/event-stream")
    if source.pages:
        subscription.read_soon()
    if request.GET.get("read_after"):
        subscription.read_after(float(request.GET["read_after"]))
    handoff(subscription)
    return stream_handoff.event_stream_response(replay)


urlpatterns = [path("events", events)]


@contextmanager
def web_server_thread(application: Any, *, threads: int = 4) -> Iterator[int]:
    """The production web server on a loopback port, run by a thread; yields the port."""
    listener = web_server.listening_socket("127.0.0.1", 0)
    server = web_server.server_create(
        application,
        listener,
        threads=threads,
        request_timeout=30,
        max_header_bytes=65_536,
        max_body_bytes=1 << 20,
    )
    thread = threading.Thread(target=server.run, name="web-server", daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:

        def close_all() -> None:
            # On the I/O thread, which alone closes its sockets: an empty map ends its loop.
            for dispatcher in list(server._map.values()):
                dispatcher.close()

        server.trigger.pull_trigger(close_all)
        thread.join(timeout=10)
        server.task_dispatcher.shutdown()


class StreamClient:
    """One client of an event stream on a raw socket, reading the response as it comes."""

    def __init__(
        self,
        port: int,
        *,
        method: str = "GET",
        version: str = "1.1",
        receive_buffer: int | None = None,
        path: str = "/events",
        headers: dict[str, str] | None = None,
        **query: str,
    ):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            # Before connecting, so the window the server may fill stays this small.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.connect(("127.0.0.1", port))
        request_line = f"{method} {path}?{urlencode(query)} HTTP/{version}"
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self.sock.sendall(f"{request_line}\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode())
        self.buffer = b""
        self.status = 0
        self.headers: dict[str, str] = {}
        self.chunked = False
        self.ended = False

    def _fill(self, deadline: float) -> bool:
        """Read what arrived; False once the server has closed the connection."""
        self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            data = self.sock.recv(1 << 16)
        except TimeoutError:
            raise AssertionError("nothing arrived in time") from None
        self.buffer += data
        return bool(data)

    def read_head(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buffer:
            assert self._fill(deadline), f"closed before the head: {self.buffer!r}"
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = dict(line.split(": ", 1) for line in lines)
        self.chunked = self.headers.get("Transfer-Encoding") == "chunked"

    def read_chunk(self, timeout: float = 10) -> bytes | None:
        """The next chunk's data (all that arrived, when not chunked); None at the end."""
        deadline = time.monotonic() + timeout
        if not self.chunked:
            while not self.buffer:
                if not self._fill(deadline):
                    self.ended = True
                    return None
            data, self.buffer = self.buffer, b""
            return data
        while b"\r\n" not in self.buffer:
            assert self._fill(deadline), "closed mid-chunk"
        size_line, rest = self.buffer.split(b"\r\n", 1)
        size = int(size_line, 16)
        while len(rest) < size + 2:
            assert self._fill(deadline), "closed mid-chunk"
            rest = self.buffer.split(b"\r\n", 1)[1]
        self.buffer = rest[size + 2 :]
        if size == 0:
            self.ended = True
            return None
        return rest[:size]

    def read_until(self, needle: bytes, timeout: float = 10) -> bytes:
        """Everything read up to and including the chunk that holds ``needle``."""
        deadline = time.monotonic() + timeout
        seen = b""
        while needle not in seen:
            chunk = self.read_chunk(max(deadline - time.monotonic(), 0.001))
            assert chunk is not None, f"the stream ended before {needle!r}: {seen!r}"
            seen += chunk
        return seen

    def at_eof(self, timeout: float = 5) -> bool:
        """Whether the server closes the connection within ``timeout`` (what comes is dropped)."""
        deadline = time.monotonic() + timeout
        try:
            while self._fill(deadline):
                self.buffer = b""
        except AssertionError:
            return False
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        self.sock.close()


def main() -> None:
    """Serve the view as ``serve_web`` serves the app (``operations.web_server.serve``), with this
    process's own hub, on the port named by the last argument: a web process to stop. Django is
    set up first (this module imports the app)."""
    from django.conf import settings
    from django.core.wsgi import get_wsgi_application

    settings.ROOT_URLCONF = URLCONF
    HUBS.append(streams.hub())
    web_server.serve(
        get_wsgi_application(),
        host="127.0.0.1",
        port=int(sys.argv[-1]),
        threads=2,
        request_timeout=30,
        max_header_bytes=65_536,
        max_body_bytes=1 << 20,
    )


def notify_events(payload: str) -> None:
    """A notification on ``ironclaw_events``, committed at once (the test runs in autocommit)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [EVENTS_CHANNEL, payload])


def eventually(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.01)
