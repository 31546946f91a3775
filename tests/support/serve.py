"""``manage.py serve`` in its own process (web, workers, supervision), and an HTTP client that
posts a message and waits for the agent's reply."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

import psutil

from tests.support.servers import BASE_DIR, free_port, http_request


@dataclass
class ServeProcess:
    process: subprocess.Popen[str]
    base_url: str
    log: IO[str]

    def child(self, marker: str) -> psutil.Process:
        """The live child whose command line contains ``marker`` (``--name turns``, serve_web)."""
        for child in psutil.Process(self.process.pid).children():
            try:
                if marker in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                    return child
            except psutil.NoSuchProcess:
                continue
        raise LookupError(f"no live child of serve runs {marker!r}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()


def wait_until_ready(base_url: str, *, timeout: float) -> float:
    """Poll /readyz until it answers 200; return how long that took."""
    started = time.monotonic()
    while True:
        try:
            if http_request(f"{base_url}/readyz", timeout=5).status == 200:
                return time.monotonic() - started
        except OSError:
            pass
        if time.monotonic() - started > timeout:
            raise AssertionError(f"/readyz did not answer 200 within {timeout} s")
        time.sleep(0.1)


@contextmanager
def serve_process(env: Mapping[str, str], *, ready_timeout: float = 60) -> Iterator[ServeProcess]:
    """Run ``manage.py serve`` (web + turn worker + background worker) until /readyz is 200."""
    port = free_port()
    full_env = {
        **os.environ,
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "text",
        "WEB_CONCURRENCY": "1",
        "WEB_THREADS": "8",
        "ENGINE_CONCURRENCY": "4",
        **env,
    }
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed in the finally below)
    process = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=BASE_DIR,
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    serve = ServeProcess(process, f"http://127.0.0.1:{port}", log)
    try:
        try:
            wait_until_ready(serve.base_url, timeout=ready_timeout)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{serve.output()}") from None
        yield serve
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                for child in psutil.Process(process.pid).children(recursive=True):
                    child.kill()
                process.kill()
                process.wait()
        log.close()


def call(
    base_url: str,
    key: str,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    timeout: float = 60,
) -> tuple[int, Any]:
    """One JSON API call with a bearer key; the status and the decoded body (text if not JSON)."""
    request = urllib.request.Request(
        base_url + path,
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            return error.code, json.loads(raw or b"null")
        except ValueError:
            return error.code, raw.decode(errors="replace")


def send_and_await_reply(
    base_url: str, key: str, content: str, *, timeout: float = 30
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Post a message (retrying 503s while the service heals); return it and the agent's reply."""
    deadline = time.monotonic() + timeout
    while True:
        status, sent = call(
            base_url, key, "POST", "/api/v1/messages", {"channel": "web", "content": content}
        )
        if status == 202:
            break
        assert status == 503, sent
        assert time.monotonic() < deadline, f"message refused until the deadline: {sent}"
        time.sleep(0.2)
    after = sent["seq"]
    while time.monotonic() < deadline:
        status, page = call(
            base_url,
            key,
            "GET",
            f"/api/v1/conversations/{sent['conversation_id']}/entries"
            f"?after_seq={after}&wait_seconds=5",
        )
        if status == 503:
            time.sleep(0.2)
            continue
        assert status == 200, page
        for entry in page["results"]:
            after = entry["seq"]
            if entry["sender"] == "agent":
                return sent, entry
    raise AssertionError(f"no agent reply to {content!r} within {timeout} s")
