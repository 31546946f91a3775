"""The harness the tests and the benchmarks share: ``manage.py serve`` in its own process (web,
workers, supervision) until /readyz answers 200, and an HTTP client that posts a message and
waits for the agent's reply.

Nothing here reads Django's settings, so a benchmark can import it before it configures them.
"""

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
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

from tests.support.servers import BASE_DIR, free_port, http_request

# What the tests' ``serve`` runs unless they say otherwise: small, so several fit on a laptop.
TEST_DEFAULTS = {
    "LOG_LEVEL": "WARNING",
    "LOG_FORMAT": "text",
    "WEB_CONCURRENCY": "1",
    "WEB_THREADS": "8",
    "ENGINE_CONCURRENCY": "4",
}
STOP_TIMEOUT_SECONDS = 30
# The longest long-poll a waiter asks for when it waits for as long as it has left.
LONG_POLL_MAX_SECONDS = 30

Page = Mapping[str, Any]


class ServeNotReady(Exception):
    """serve exited, or /readyz did not answer 200 in time."""


@dataclass
class ServeProcess:
    process: subprocess.Popen[str]
    base_url: str
    log: IO[str]

    def child(self, marker: str) -> psutil.Process:
        """The live child whose command line contains ``marker`` (``--name turns``, serve_web)."""
        for child in self.children():
            try:
                if marker in " ".join(child.cmdline()):
                    return child
            except psutil.NoSuchProcess:
                continue
        raise LookupError(f"no live child of serve runs {marker!r}")

    def children(self) -> list[psutil.Process]:
        """serve's live children (web processes and workers), zombies left out."""
        alive = []
        for child in psutil.Process(self.process.pid).children():
            try:
                if child.status() != psutil.STATUS_ZOMBIE:
                    alive.append(child)
            except psutil.NoSuchProcess:
                continue
        return alive

    def descendants(self) -> list[psutil.Process]:
        """Every live process serve started, and theirs, zombies left out."""
        alive = []
        for process in psutil.Process(self.process.pid).children(recursive=True):
            with suppress(psutil.NoSuchProcess):
                if process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(process)
        return alive

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()


def readyz_status(base_url: str) -> int:
    """/readyz's status, 0 when nothing answers."""
    try:
        return http_request(f"{base_url}/readyz", timeout=5).status
    except OSError:
        return 0


def ready_within(base_url: str, timeout: float) -> float | None:
    """Seconds until /readyz answered 200, polled every 0.1 s; None when not within ``timeout``."""
    started = time.monotonic()
    while readyz_status(base_url) != 200:
        if time.monotonic() - started > timeout:
            return None
        time.sleep(0.1)
    return time.monotonic() - started


def wait_until_ready(base_url: str, *, timeout: float) -> float:
    """Poll /readyz until it answers 200; return how long that took."""
    took = ready_within(base_url, timeout)
    if took is None:
        raise AssertionError(f"/readyz did not answer 200 within {timeout} s")
    return took


@contextmanager
def serve_running(
    env: Mapping[str, str], *, log: IO[str], ready_timeout: float = 60
) -> Iterator[ServeProcess]:
    """Run ``manage.py serve`` with exactly ``env``, its output to ``log``, until /readyz is 200;
    raise ServeNotReady if it is not within ``ready_timeout`` or serve exits first."""
    port = free_port()
    # A session of its own: a terminal's Ctrl-C reaches the caller only, whose exit stops serve
    # (and serve its children), and a serve that will not stop is killed with all it started.
    process = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=BASE_DIR,
        env=dict(env),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    serve = ServeProcess(process, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + ready_timeout
        while readyz_status(serve.base_url) != 200:
            if process.poll() is not None:
                raise ServeNotReady(f"serve exited with status {process.returncode} before ready")
            if time.monotonic() > deadline:
                raise ServeNotReady(f"/readyz did not answer 200 within {ready_timeout} s")
            time.sleep(0.1)
        yield serve
    finally:
        if process.poll() is None:
            # What serve started and did not stop is killed one by one: its children do not
            # share its process group.
            started = serve.descendants()
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            processes_kill(started)


def processes_alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``processes`` still running (the same processes, not reused pids; zombies, dead
    but not yet reaped, left out)."""
    alive = []
    for process in processes:
        with suppress(psutil.NoSuchProcess):
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
    return alive


def processes_kill(processes: list[psutil.Process]) -> None:
    """SIGKILL those of ``processes`` still alive (the same processes, not reused pids)."""
    for process in processes:
        with suppress(psutil.NoSuchProcess):
            if process.is_running():
                process.kill()


@contextmanager
def serve_process(env: Mapping[str, str], *, ready_timeout: float = 60) -> Iterator[ServeProcess]:
    """Run ``manage.py serve`` (web + turn worker + background worker) until /readyz is 200,
    with this process's environment, TEST_DEFAULTS and ``env``."""
    full_env = {**os.environ, **TEST_DEFAULTS, **env}
    with tempfile.TemporaryFile("w+") as log, ExitStack() as running:
        try:
            serve = running.enter_context(
                serve_running(full_env, log=log, ready_timeout=ready_timeout)
            )
        except ServeNotReady as error:
            log.seek(0)
            raise AssertionError(f"{error}\n{log.read()}") from None
        yield serve


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


def post_message(
    base_url: str, key: str, content: str, *, channel: str = "web", timeout: float = 60
) -> tuple[int, Any]:
    """POST /api/v1/messages: 202 and the entry (its seq, conversation_id, thread_id) when taken."""
    body = {"channel": channel, "content": content}
    return call(base_url, key, "POST", "/api/v1/messages", body, timeout=timeout)


def await_reply(
    fetch: Callable[[str, int], Page | None],
    sent: Mapping[str, Any],
    *,
    timeout: float,
    wait_seconds: int | None = 5,
    poll_interval: float = 0.0,
) -> dict[str, Any] | None:
    """Long-poll for the agent's entries after the message ``sent`` until the first one; return
    it, or None when ``timeout`` passes or ``fetch`` gives up.

    ``fetch(path, wait)`` GETs a page of entries (long-polling ``wait`` seconds) or returns None;
    how it retries or fails is the caller's. The path asks for ``sender=agent``: the server waits
    past the system entries ("Thread started"), so a reply costs one request. ``wait_seconds``
    None asks for the time left, up to LONG_POLL_MAX_SECONDS. A page answered in under half its
    wait without the reply is followed by a ``poll_interval`` sleep, for a server that does not
    honour the long-poll.
    """
    path = (
        f"/api/v1/conversations/{sent['conversation_id']}/entries"
        f"?after_seq={int(sent['seq'])}&sender=agent"
    )
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        wait = (
            wait_seconds
            if wait_seconds is not None
            else max(1, min(LONG_POLL_MAX_SECONDS, int(remaining)))
        )
        asked = time.monotonic()
        page = fetch(f"{path}&wait_seconds={wait}", wait)
        if page is None:
            return None
        if page["results"]:
            return dict(page["results"][0])
        if poll_interval and time.monotonic() - asked < wait / 2:
            time.sleep(poll_interval)
    return None


def send_and_await_reply(
    base_url: str, key: str, content: str, *, timeout: float = 30
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Post a message (retrying 503s while the service heals); return it and the agent's reply."""
    deadline = time.monotonic() + timeout
    while True:
        status, sent = post_message(base_url, key, content)
        if status == 202:
            break
        assert status == 503, sent
        assert time.monotonic() < deadline, f"message refused until the deadline: {sent}"
        time.sleep(0.2)

    def fetch(path: str, wait: int) -> Page:
        status, page = call(base_url, key, "GET", path)
        if status == 503:
            time.sleep(0.2)
            return {"results": []}
        assert status == 200, page
        return dict(page)

    reply = await_reply(fetch, sent, timeout=deadline - time.monotonic())
    if reply is None:
        raise AssertionError(f"no agent reply to {content!r} within {timeout} s")
    return sent, reply


def manage(env: Mapping[str, str], *args: str, timeout: float = 180) -> str:
    """Run ``manage.py`` with exactly ``env``; its standard output (it must succeed)."""
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def embedded_serve_env(var_dir: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without DATABASE_URL, for an embedded PostgreSQL of its own
    under ``var_dir`` (keep it short: Unix socket paths are limited to about 100 bytes)."""
    return {
        **{name: value for name, value in os.environ.items() if name != "DATABASE_URL"},
        **TEST_DEFAULTS,
        "IRONCLAW_VAR_DIR": str(var_dir),
        "EMBEDDED_DATABASE_DIR": str(var_dir / "pgdata"),
        **extra,
    }


def postmaster_pid(folder: Path) -> int | None:
    """The pid in ``folder``'s postmaster.pid; None without one."""
    try:
        return int((folder / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def postgres_processes(folder: Path) -> list[psutil.Process]:
    """The live PostgreSQL processes of the data folder ``folder``: any postmaster started on it
    (whether or not postmaster.pid still names it) and its backends."""
    data_dir = str(folder.resolve())
    postmasters = []
    for process in psutil.process_iter(["name", "cmdline"]):
        with suppress(psutil.Error):
            if process.info["name"] == "postgres" and any(
                data_dir in argument for argument in process.info["cmdline"] or []
            ):
                postmasters.append(process)
    found = {}
    for postmaster in postmasters:
        with suppress(psutil.Error):
            for process in [postmaster, *postmaster.children(recursive=True)]:
                if process.status() != psutil.STATUS_ZOMBIE:
                    found[process.pid] = process
    return list(found.values())


def postgres_stop(folder: Path) -> None:
    """Stop whatever PostgreSQL still runs on ``folder`` (a test's clean-up): SIGTERM, then
    SIGKILL after 30 s."""
    running = postgres_processes(folder)
    for process in running:
        with suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(running, timeout=30)
    processes_kill(alive)
