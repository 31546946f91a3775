"""A loopback OpenAI-compatible /v1/embeddings server that takes a fixed time per input text.

The turns benchmark's baseline indexes engine state inline, as the origin system did; this server
stands in for the embeddings API so that indexing costs what a remote call costs, without a
network or an API key.
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

NATIVE_DIMENSIONS = 1536


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class EmbeddingsServer:
    seconds_per_input: float
    url: str = ""
    requests: int = 0
    inputs: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/embeddings":
                    self.send_error(404)
                    return
                texts = body["input"]
                if isinstance(texts, str):
                    texts = [texts]
                with server._lock:
                    server.requests += 1
                    server.inputs += len(texts)
                time.sleep(server.seconds_per_input * len(texts))
                size = body.get("dimensions", NATIVE_DIMENSIONS)
                data = [
                    {"object": "embedding", "index": index, "embedding": [1.0 / size] * size}
                    for index in range(len(texts))
                ]
                encoded = json.dumps(
                    {"object": "list", "data": data, "model": body.get("model", "")}
                ).encode()
                with suppress(BrokenPipeError, ConnectionResetError):  # the client gave up
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(encoded)))
                    self.end_headers()
                    self.wfile.write(encoded)

        return Handler


@contextmanager
def embeddings_server(seconds_per_input: float) -> Iterator[EmbeddingsServer]:
    server = EmbeddingsServer(seconds_per_input=seconds_per_input)
    port = free_port()
    httpd = ThreadingHTTPServer(("127.0.0.1", port), server.handler())
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{port}/v1"
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
