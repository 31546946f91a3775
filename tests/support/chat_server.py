"""A real OpenAI-compatible chat-completions server on loopback, scripted by the test.

It answers ``POST /v1/chat/completions`` with "reply to: <last user message>", records every
request, counts how many are in flight at once, and can hold requests until the test releases
them (to kill a worker mid-call, or to prove that turns run in parallel).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.servers import free_port


@dataclass
class ChatServer:
    delay: float = 0.0
    fail_status: int | None = None
    # Requests wait until this many are in flight at once (or hold_timeout passes).
    hold_until_in_flight: int = 0
    hold_timeout: float = 20.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    max_in_flight: int = 0
    _in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _changed: threading.Condition = field(init=False)
    # Cleared: requests block until the test sets it again.
    gate: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._changed = threading.Condition(self._lock)
        self.gate.set()

    def last_user_messages(self) -> list[str]:
        """The last user message of every request, in arrival order."""
        with self._lock:
            requests = list(self.requests)
        return [
            [m["content"] for m in request["messages"] if m["role"] == "user"][-1]
            for request in requests
        ]

    def wait_for_requests(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.requests) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"expected {count} model requests, got {len(self.requests)}"
                    )
                self._changed.wait(remaining)

    def _answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._changed:
            self.requests.append(body)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            self._changed.notify_all()
            deadline = time.monotonic() + self.hold_timeout
            while self._in_flight < self.hold_until_in_flight and time.monotonic() < deadline:
                self._changed.wait(deadline - time.monotonic())
        try:
            self.gate.wait(60)
            if self.delay:
                time.sleep(self.delay)
            if self.fail_status is not None:
                return self.fail_status, {"error": {"message": "scripted failure", "type": "x"}}
            user = [m["content"] for m in body["messages"] if m["role"] == "user"]
            text = f"reply to: {user[-1] if user else ''}"
            return 200, {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "test"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
            }
        finally:
            with self._changed:
                self._in_flight -= 1
                self._changed.notify_all()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path.rstrip("/") != "/v1/chat/completions":
                    status, answer = 404, {"error": {"message": "no such route"}}
                else:
                    status, answer = server._answer(body)
                raw = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@contextmanager
def chat_server(**options: Any) -> Iterator[ChatServer]:
    server = ChatServer(**options)
    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), server.handler())
    httpd.daemon_threads = True
    server.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.gate.set()
        httpd.shutdown()
        httpd.server_close()
