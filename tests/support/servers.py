"""Real processes and sockets for tests: the app under its web server, and a TCP proxy to the
database.

The app server runs in its own OS process with its own settings (pool size, timeouts) and talks
to the test database over a real connection, so pool and outage behaviour is the production one.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

# The checkout, found without Django's settings: benchmarks import these helpers before they
# configure them.
BASE_DIR = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def database_url(
    settings_dict: Mapping[str, Any], *, host: str | None = None, port: int | None = None
) -> str:
    """A DATABASE_URL for the database Django is connected to (the test database in tests)."""
    user = quote(settings_dict["USER"] or "", safe="")
    password = quote(settings_dict["PASSWORD"] or "", safe="")
    credentials = f"{user}:{password}@" if password else f"{user}@"
    name = quote(settings_dict["NAME"], safe="")
    host = host or settings_dict["HOST"] or "localhost"
    port = port or int(settings_dict["PORT"] or 5432)
    if host.startswith("/"):
        return f"postgresql://{credentials}/{name}?host={quote(host, safe='/')}&port={port}"
    return f"postgresql://{credentials}{host}:{port}/{name}"


@dataclass
class HttpResult:
    status: int
    body: Any
    headers: Mapping[str, str]
    elapsed: float


def http_request(
    url: str, *, method: str = "GET", headers: Mapping[str, str] | None = None, timeout: float = 30
) -> HttpResult:
    request = urllib.request.Request(url, method=method, headers=dict(headers or {}))
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw, response_headers = response.status, response.read(), response.headers
    except urllib.error.HTTPError as error:
        status, raw, response_headers = error.code, error.read(), error.headers
    elapsed = time.monotonic() - started
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = raw.decode(errors="replace")
    return HttpResult(status, body, dict(response_headers), elapsed)


def _stop(process: subprocess.Popen[str]) -> None:
    """Terminate a child (if it still runs), kill it if it lingers, and close its output."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout:
        process.stdout.close()


class _OutputTail:
    """Reads a child's output as it comes and keeps its last lines.

    Nobody else reads the pipe: a server that logs more than the pipe holds (64 KiB, a few
    hundred 4xx warnings) would block on its next write and stop answering.
    """

    def __init__(self, stream: IO[str], *, lines: int = 2000):
        self._lines: deque[str] = deque(maxlen=lines)
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        with suppress(OSError, ValueError):
            for line in stream:
                self._lines.append(line)

    def text(self, *, wait: float = 0) -> str:
        self._thread.join(wait)
        return "".join(self._lines)


@contextmanager
def app_server(
    env: Mapping[str, str], *, threads: int = 4, log_file: Path | None = None
) -> Iterator[str]:
    """Run the app as ``serve`` does (one waitress process) with ``env`` on a free port; yield its
    base URL. Its output goes to ``log_file`` when given (for tests that read the log)."""
    port = free_port()
    full_env = {**os.environ, "LOG_LEVEL": "WARNING", "LOG_FORMAT": "text", **env}
    log = log_file.open("w") if log_file else None
    process = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "serve_web",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--threads",
            str(threads),
        ],
        cwd=BASE_DIR,
        env=full_env,
        stdout=log if log else subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # Without a log file, the output is read as it comes (see _OutputTail).
    output_tail = _OutputTail(process.stdout) if process.stdout else None
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                if output_tail is not None:
                    output = output_tail.text(wait=5)
                else:
                    output = log_file.read_text() if log_file else ""
                raise RuntimeError(f"app server exited with {process.returncode}:\n{output}")
            try:
                if http_request(f"{base_url}/healthz", timeout=2).status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("app server did not answer /healthz within 30 s")
            time.sleep(0.1)
        yield base_url
    finally:
        _stop(process)
        if log:
            log.close()


class TcpProxy:
    """A loopback TCP proxy to the database: ``stop()`` is an outage, ``start()`` a recovery."""

    def __init__(self, upstream: str | tuple[str, int]):
        self.upstream = upstream
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._running = threading.Event()

    def _connect_upstream(self) -> socket.socket:
        if isinstance(self.upstream, str):
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        upstream.connect(self.upstream)
        return upstream

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self._listener = listener
        self._running.set()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._running.clear()
        if self._thread:
            self._thread.join()
        if self._listener:
            self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while self._running.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = self._connect_upstream()
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    def _pipe(self, client: socket.socket, upstream: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        try:
            # stop() may have closed the pair already (a cut right after the accept).
            selector.register(client, selectors.EVENT_READ, upstream)
            selector.register(upstream, selectors.EVENT_READ, client)
            while self._running.is_set():
                for key, _ in selector.select(timeout=0.2):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            selector.close()
            with self._lock:
                for sock in (client, upstream):
                    self._sockets.discard(sock)
                    sock.close()


@contextmanager
def worker_process(
    env: Mapping[str, str],
    *,
    queues: str = "threads",
    concurrency: int = 4,
    name: str = "worker",
) -> Iterator[subprocess.Popen[str]]:
    """Run ``manage.py run_worker`` with ``env`` in its own process; the test may kill it."""
    full_env = {**os.environ, "LOG_LEVEL": "WARNING", "LOG_FORMAT": "text", **env}
    process = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "run_worker",
            "--queues",
            queues,
            "--concurrency",
            str(concurrency),
            "--name",
            name,
        ],
        cwd=BASE_DIR,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # Read as it comes: a worker that logs more than the pipe holds would block (_OutputTail).
    if process.stdout:
        _OutputTail(process.stdout)
    try:
        yield process
    finally:
        _stop(process)
