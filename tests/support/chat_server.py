"""A real OpenAI-compatible chat-completions server on loopback, scripted by the test.

It answers ``POST /v1/chat/completions`` with "reply to: <last user message>", records every
request, counts how many are in flight at once, and can hold requests until the test releases
them (to kill a worker mid-call, or to prove that turns run in parallel). A request with
``"stream": true`` gets the reply as real servers stream it: Server-Sent Events over a chunked
response, ``chat.completion.chunk`` objects of a few characters each, the last with its
``finish_reason``, then (with ``stream_options.include_usage``) a chunk with the usage and no
choices, then ``data: [DONE]``. The test can slow the stream down, leave the usage out, or cut
the connection mid-way.
"""

from __future__ import annotations

import json
import socket
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
    # Requests wait until this many have been in flight at once (or hold_timeout passes). Once
    # reached, every waiter goes on, even if a released request has already finished.
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
    # The reply's text, instead of "reply to: ...".
    reply: str | None = None
    # Streaming: characters of text per chunk, seconds between chunks, whether the usage chunk
    # is sent when asked for, and after how many text chunks the connection is cut (None: never).
    stream_chars: int = 4
    stream_interval: float = 0.0
    stream_usage: bool = True
    cut_after_chunks: int | None = None

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
            while self.max_in_flight < self.hold_until_in_flight and time.monotonic() < deadline:
                self._changed.wait(deadline - time.monotonic())
        try:
            self.gate.wait(60)
            if self.delay:
                time.sleep(self.delay)
            if self.fail_status is not None:
                return self.fail_status, {"error": {"message": "scripted failure", "type": "x"}}
            user = [m["content"] for m in body["messages"] if m["role"] == "user"]
            text = self.reply if self.reply is not None else f"reply to: {user[-1] if user else ''}"
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
                if status == 200 and body.get("stream"):
                    options = body.get("stream_options") or {}
                    self._stream(answer, usage=bool(options.get("include_usage")))
                    return
                raw = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _stream(self, answer: dict[str, Any], *, usage: bool) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                text = answer["choices"][0]["message"]["content"]
                pieces = [
                    text[i : i + server.stream_chars]
                    for i in range(0, len(text), server.stream_chars)
                ]
                self._event(answer, [{"index": 0, "delta": {"role": "assistant", "content": ""}}])
                for n, piece in enumerate(pieces):
                    if server.cut_after_chunks is not None and n == server.cut_after_chunks:
                        # Mid-body, without the chunked encoding's last chunk: a broken stream.
                        self.wfile.flush()
                        self.connection.shutdown(socket.SHUT_RDWR)
                        self.close_connection = True
                        return
                    if server.stream_interval:
                        time.sleep(server.stream_interval)
                    self._event(answer, [{"index": 0, "delta": {"content": piece}}])
                self._event(answer, [{"index": 0, "delta": {}, "finish_reason": "stop"}])
                if usage and server.stream_usage:
                    self._event(answer, [], usage=answer["usage"])
                self._chunk(b"data: [DONE]\n\n")
                self._chunk(b"")

            def _event(
                self, answer: dict[str, Any], choices: list[dict[str, Any]], **extra: Any
            ) -> None:
                for choice in choices:
                    choice.setdefault("finish_reason", None)
                chunk = {
                    "id": answer["id"],
                    "object": "chat.completion.chunk",
                    "created": answer["created"],
                    "model": answer["model"],
                    "choices": choices,
                    **extra,
                }
                self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

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
