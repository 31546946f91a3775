"""A real OpenAI-compatible /v1/embeddings server on loopback, for the provider and the indexer
in tests, and for the turns benchmark's baseline, which indexes engine state inline through it as
the origin system did (``seconds_per_input`` makes it cost what a remote call costs, without a
network or an API key)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.servers import free_port


@dataclass
class FakeEmbeddingsServer:
    """A real OpenAI-compatible /v1/embeddings server on loopback with scripted failures."""

    fail_first: int = 0
    fail_status: int = 500
    delay: float = 0.0  # seconds per request
    seconds_per_input: float = 0.0  # and per input text, as a remote API's time grows with them
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    inputs: int = 0
    url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                texts = body.get("input", [])
                texts = [texts] if isinstance(texts, str) else texts
                with server._lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    server.inputs += len(texts)
                    failing = len(server.requests) <= server.fail_first
                pause = server.delay + server.seconds_per_input * len(texts)
                if pause:
                    time.sleep(pause)
                if self.path != "/v1/embeddings":
                    self.send_error(404)
                    return
                if failing:
                    self.send_response(server.fail_status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                size = body.get("dimensions", 3)
                data = [
                    {"object": "embedding", "index": index, "embedding": [float(len(text))] * size}
                    for index, text in enumerate(texts)
                ]
                data.reverse()  # servers may answer out of order; "index" says which is which
                payload = json.dumps({"object": "list", "data": data, "model": body["model"]})
                encoded = payload.encode()
                with suppress(BrokenPipeError, ConnectionResetError):  # client timed out
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(encoded)))
                    self.end_headers()
                    self.wfile.write(encoded)

        return Handler


@contextmanager
def running_embeddings_server(**options: Any) -> Iterator[FakeEmbeddingsServer]:
    """Serve ``FakeEmbeddingsServer(**options)`` on a free port; its ``url`` has no ``/v1``."""
    fake = FakeEmbeddingsServer(**options)
    port = free_port()
    httpd = ThreadingHTTPServer(("127.0.0.1", port), fake.handler())
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        httpd.shutdown()
        httpd.server_close()
