"""A real HTTP server on loopback that answers event-stream requests as the test scripts them,
byte for byte: the client's parsing and reconnecting meet what no well-behaved ironclaw server
sends (a BOM, CR line ends, events cut by the connection's end, a silent connection).

Each ``GET .../events`` takes the next ``Answer`` of the script (when none is left, the request
is held silent until the server stops); ``GET /api/v1/threads/<id>`` answers the thread with
``thread_state``. Every request is recorded with its headers.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.servers import free_port


@dataclass
class Answer:
    """One connection's answer. A 200 is chunked ``text/event-stream``: ``chunks``, each a chunk
    written ``pause`` s after the one before, then ``end``: ``clean`` (the last chunk),
    ``cut`` (the connection closed without it) or ``silent`` (nothing more, the connection left
    open until the server stops). Another status is a JSON error body."""

    status: int = 200
    chunks: list[bytes] = field(default_factory=list)
    end: str = "clean"
    pause: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    at: float


class SseScript:
    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.requests: list[Recorded] = []
        self.thread_state = "running"
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.url = ""

    def add(self, *answers: Answer) -> None:
        with self.lock:
            self.answers.extend(answers)

    def next_answer(self) -> Answer | None:
        with self.lock:
            return self.answers.pop(0) if self.answers else None

    def stream_requests(self) -> list[Recorded]:
        with self.lock:
            return [
                request
                for request in self.requests
                if request.path.split("?")[0].endswith("/events")
            ]

    def last_event_ids(self) -> list[str | None]:
        """The Last-Event-ID each stream request sent (None: none)."""
        return [request.headers.get("last-event-id") for request in self.stream_requests()]


def _handler(script: SseScript) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            headers = {name.lower(): value for name, value in self.headers.items()}
            with script.lock:
                script.requests.append(Recorded(self.path, headers, time.monotonic()))
            self.close_connection = True
            path = self.path.split("?")[0]
            if not path.endswith("/events"):
                self._json(200, {"id": path.rsplit("/", 1)[-1], "state": script.thread_state})
                return
            answer = script.next_answer()
            if answer is None:
                answer = Answer(end="silent")
            if answer.status != 200:
                body = {"error": {"code": f"code_{answer.status}", "message": "scripted"}}
                self._json(answer.status, body, answer.headers)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.end_headers()
            with suppress(OSError):
                for n, chunk in enumerate(answer.chunks):
                    if n and answer.pause:
                        time.sleep(answer.pause)
                    self.wfile.write(b"%X\r\n%b\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                if answer.end == "clean":
                    self.wfile.write(b"0\r\n\r\n")
                elif answer.end == "silent":
                    script.stopping.wait(60)
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)

        def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(raw)

    return Handler


@contextmanager
def sse_server(script: SseScript, *, port: int | None = None) -> Iterator[SseScript]:
    """Serve ``script`` on ``port`` (a free one by default) until the block ends."""
    server = ThreadingHTTPServer(("127.0.0.1", port or free_port()), _handler(script))
    server.daemon_threads = True
    script.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield script
    finally:
        script.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(10)
        script.stopping.clear()
