"""A webhook receiver on loopback: it records every delivery attempt it gets (headers and raw
body) and answers each with the next status of a script (then 200)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class WebhookReceiver:
    url: str
    # Statuses to answer, in order, before answering 200 to everything.
    script: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    arrived: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.arrived = threading.Condition(self.lock)

    def answer(self, headers: dict[str, str], body: bytes) -> int:
        with self.lock:
            status = self.script.pop(0) if self.script else 200
            self.received.append(Received(headers, body, status))
            self.arrived.notify_all()
            return status

    def accepted(self) -> list[Received]:
        with self.lock:
            return [item for item in self.received if 200 <= item.status < 300]

    def wait_for(self, count: int, *, timeout: float) -> list[Received]:
        """The accepted deliveries once there are at least ``count`` (or what came by then)."""
        with self.lock:
            self.arrived.wait_for(
                lambda: sum(200 <= item.status < 300 for item in self.received) >= count,
                timeout=timeout,
            )
        return self.accepted()


@contextmanager
def webhook_receiver(*, script: list[int] | None = None) -> Iterator[WebhookReceiver]:
    receiver: WebhookReceiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            status = receiver.answer({name: value for name, value in self.headers.items()}, body)
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver = WebhookReceiver(
        url=f"http://127.0.0.1:{server.server_address[1]}/hooks", script=list(script or [])
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
