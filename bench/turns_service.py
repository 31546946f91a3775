"""The turns benchmark's driver: one configuration's service under ``manage.py serve`` on a
scratch database, and its tenants each posting messages and waiting for the agent's replies."""

from __future__ import annotations

import itertools
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import IO, Any

import psutil

from bench.scratch_database import scratch_database
from bench.turns_cpu import CpuMeter, cpu_per_turn
from bench.turns_load import Load
from tests.support.serve import (
    Page,
    ServeNotReady,
    ServeProcess,
    await_reply,
    call,
    post_message,
    serve_running,
)
from tests.support.servers import database_url

STARTUP_TIMEOUT_SECONDS = 60
# Until the server honours wait_seconds it answers at once; then the driver polls this often.
POLL_INTERVAL_SECONDS = 0.05
MONITOR_INTERVAL_SECONDS = 0.5
# How long the idle service is watched, before the first message, for the CPU it burns anyway.
IDLE_SECONDS = 3.0


class BenchFailure(Exception):
    """The run cannot go on; the message says why, and the services' log tail follows it."""


class Services:
    """One configuration's serve: the web processes and both workers. A child that exits fails
    the run (serve would start it again, and the figures would include the restart)."""

    def __init__(self, label: str, serve: ServeProcess):
        self.label = label
        self.serve = serve
        self.base_url = serve.base_url
        self.children = {child.pid: _child_name(child) for child in serve.children()}
        self.failure: str | None = None
        self.polls = 0  # entries requests; about one a turn when the long-poll is honoured

    def check(self) -> None:
        """Raise if serve or one of its children died, or the monitor found a failed turn job.
        Cheap: it runs before every poll, inside the turns' measured time."""
        code = self.serve.process.poll()
        if code is not None:
            raise BenchFailure(f"{self.label}: serve exited with status {code}")
        if self.failure:
            raise BenchFailure(self.failure)

    def watch(self, stop: threading.Event) -> None:
        """The monitor: children still alive, and no failed turn job (a runner that raised
        leaves its thread waiting forever)."""
        from django.db import connection

        try:
            while not stop.wait(MONITOR_INTERVAL_SECONDS):
                alive = {child.pid for child in self.serve.children()}
                gone = [name for pid, name in self.children.items() if pid not in alive]
                if gone:
                    self.failure = f"{self.label}: the {gone[0]} exited (its output is in the log)"
                    return
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT count(*) FROM conversations_thread WHERE state = 'failed'"
                    )
                    (failed,) = cursor.fetchone() or (0,)
                if failed:
                    self.failure = (
                        f"{self.label}: {failed} turn(s) failed (their outcome's error is on the "
                        "thread; the log has the rest)"
                    )
                    return
        except Exception as error:  # the database going away ends the run elsewhere
            self.failure = self.failure or f"{self.label}: monitor: {error!r}"
        finally:
            connection.close()


def _child_name(child: psutil.Process) -> str:
    argv = child.cmdline()
    kind = argv[argv.index("--name") + 1] if "--name" in argv else "web"
    return f"{kind} process (pid {child.pid})"


@contextmanager
def running_services(label: str, env: Mapping[str, str], log: IO[str]) -> Iterator[Services]:
    log.write(f"\n===== {label}: manage.py serve\n")
    log.flush()
    try:
        with serve_running(env, log=log, ready_timeout=STARTUP_TIMEOUT_SECONDS) as serve:
            services = Services(label, serve)
            stop_monitor = threading.Event()
            monitor = threading.Thread(target=services.watch, args=(stop_monitor,), daemon=True)
            monitor.start()
            try:
                yield services
            finally:
                stop_monitor.set()
                monitor.join(timeout=5)
    except ServeNotReady as error:
        raise BenchFailure(f"{label}: {error}") from None
    finally:
        log.write(f"===== {label}: stopped\n")
        log.flush()


@dataclass
class Turn:
    tenant: int
    number: int
    thread_id: str
    seconds: float  # post sent -> agent entry seen
    sent_at: float  # wall clock, for the server's timestamps
    seen_at: float
    detail: dict[str, Any] = field(default_factory=dict)
    post_seconds: float = 0.0  # the POST's own request, sent -> answered


def one_turn(
    services: Services,
    key: str,
    content: str,
    what: str,
    timeout: float,
    *,
    tenant: int = -1,
    number: int = 0,
) -> Turn:
    """Post a message and wait for the reply: the turn's thread, times and wall clock."""
    base_url, label = services.base_url, services.label
    sent_at = time.time()
    started = time.perf_counter()
    status, posted = post_message(base_url, key, content, timeout=30)
    post_seconds = time.perf_counter() - started
    if status != 202:
        raise BenchFailure(f"{label}: {what}: POST messages answered {status}: {posted}")

    def fetch(path: str, wait: int) -> Page:
        services.check()
        services.polls += 1
        try:
            status, page = call(base_url, key, "GET", path, timeout=wait + 15)
        except OSError as error:
            raise BenchFailure(f"{label}: {what}: entries request failed: {error}") from None
        if status != 200:
            raise BenchFailure(f"{label}: {what}: entries answered HTTP {status}: {page}")
        return dict(page)

    reply = await_reply(
        fetch,
        posted,
        timeout=timeout,
        wait_seconds=None,
        poll_interval=POLL_INTERVAL_SECONDS,
    )
    if reply is None:
        thread_id = posted["thread_id"]
        status, thread = call(base_url, key, "GET", f"/api/v1/threads/{thread_id}", timeout=10)
        state = (
            {k: thread.get(k) for k in ("state", "claim_count", "step_count", "outcome")}
            if isinstance(thread, dict)
            else thread
        )
        raise BenchFailure(
            f"{label}: {what}: no agent reply within {timeout:.0f} s "
            f"(thread {thread_id}: HTTP {status} {state})"
        )
    seconds = time.perf_counter() - started
    thread_id = str(reply.get("thread_id") or posted["thread_id"])
    return Turn(tenant, number, thread_id, seconds, sent_at, time.time(), post_seconds=post_seconds)


def drive(
    services: Services,
    keys: list[str],
    load: Load,
    *,
    until: float | None = None,
    after_turn: Callable[[Turn, str], None] | None = None,
    prefix: str = "",
) -> list[Turn]:
    """Every tenant in its own thread, released together; all turns, or the first failure.

    Each tenant takes ``load.turns`` turns, or with ``until`` (a ``time.monotonic()`` deadline)
    as many as it starts before it. ``after_turn(turn, key)`` runs on the tenant's thread after
    each of its turns, inside its loop (a benchmark's extra request). ``prefix`` starts each
    message and label (the turns of another round)."""
    turns: list[Turn] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(keys) + 1)

    def tenant(number: int, key: str) -> None:
        try:
            barrier.wait()
            if load.spread:
                time.sleep(load.configured_model_seconds * number / len(keys))
            for index in itertools.count() if until is not None else range(load.turns):
                if until is not None and time.monotonic() >= until:
                    return
                what = f"{prefix} tenant {number} turn {index + 1}".lstrip()
                content = f"{prefix} turn {index + 1} of tenant {number}".lstrip()
                turn = one_turn(
                    services, key, content, what, load.turn_timeout, tenant=number, number=index + 1
                )
                if after_turn is not None:
                    after_turn(turn, key)
                with lock:
                    turns.append(turn)
                if errors:
                    return
        except BaseException as error:
            with lock:
                errors.append(error)

    threads = [
        threading.Thread(target=tenant, args=(number, key), daemon=True)
        for number, key in enumerate(keys)
    ]
    for thread in threads:
        thread.start()
    barrier.wait()
    for thread in threads:
        while thread.is_alive():  # joined in slices, so Ctrl-C reaches the main thread
            thread.join(0.2)
            if errors:
                raise errors[0]
    if errors:
        raise errors[0]
    return turns


@dataclass
class Run:
    turns: list[Turn]
    cpu_ms_per_turn: dict[str, float]  # by role (bench/turns_cpu.py)
    # The first burst (one turn per tenant, all at once, on pools and database sessions that
    # have only served the warm-up turn): its turns and CPU, reported apart from the measured ones.
    cold_turns: list[Turn] = field(default_factory=list)
    cold_cpu_ms_per_turn: dict[str, float] = field(default_factory=dict)


def database_postmaster_pid() -> int:
    """The pid of the PostgreSQL server Django's connection talks to (for its CPU)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (backend,) = cursor.fetchone() or (0,)
    parent = psutil.Process(backend).parent()
    assert parent is not None
    return parent.pid


@contextmanager
def scratch_services(
    label: str,
    env: Mapping[str, str],
    log: IO[str],
    *,
    tenants: int,
    database_prefix: str = "ironclaw_bench_turns",
) -> Iterator[tuple[Services, list[str]]]:
    """serve with ``env`` on a scratch database of its own, and ``tenants`` API keys, one per
    tenant (``bench-tenant-<n>``), created before it starts."""
    with (
        scratch_database(f"{database_prefix}_{label}") as name,
        tempfile.TemporaryDirectory(prefix="ironclaw-bench-metrics-") as metrics_dir,
    ):
        from django.conf import settings

        from accounts.services import api_key_create

        env = {
            **env,
            "DATABASE_URL": database_url(settings.DATABASES["default"]),
            # With DATABASE_URL the settings require SECRET_KEY: serve shares this process's.
            "SECRET_KEY": settings.SECRET_KEY,
            # serve empties its metrics folder: one of its own, never the checkout's var/.
            "METRICS_DIR": metrics_dir,
        }
        keys = [
            api_key_create(name="bench", user_id=f"bench-tenant-{n}").raw_key
            for n in range(tenants)
        ]
        print(
            f"  {label}: database {name}; starting serve (web, turn and background workers)",
            flush=True,
        )
        with running_services(label, env, log) as services:
            yield services, keys


def thread_detail(services: Services, key: str, turn: Turn) -> float:
    """Fill ``turn.detail`` from GET threads/{id} (its timings, its model time); the request's
    seconds."""
    started = time.perf_counter()
    path = f"/api/v1/threads/{turn.thread_id}"
    status, detail = call(services.base_url, key, "GET", path, timeout=30)
    seconds = time.perf_counter() - started
    if status == 200 and isinstance(detail, dict):
        turn.detail = detail
    return seconds


def run_configuration(label: str, env: dict[str, str], load: Load, log: IO[str]) -> Run:
    """One configuration on its own scratch database: services up, warm-up turn, a first burst of
    one turn per tenant (measured apart), then the measured turns, with the CPU of every process
    read before and after each."""
    with scratch_services(label, env, log, tenants=load.tenants + 1) as (services, keys):
        # Imports, pools and job fetching warmed up, on a tenant of its own.
        one_turn(services, keys[-1], "warm-up", "warm-up turn", load.turn_timeout)
        meter = CpuMeter(
            serve_pid=services.serve.process.pid, postmaster_pid=database_postmaster_pid()
        )
        idle = meter.idle_rates(IDLE_SECONDS)
        # The first burst grows every pool to its peak: each new connection is a new PostgreSQL
        # session, whose first statements load its caches and compile the trigger functions.
        # A service that has run a while has them; the measured turns come after it.
        before = meter.sample()
        cold = drive(services, keys[:-1], replace(load, turns=1), prefix="cold")
        after_cold = meter.sample()
        cold_cpu = cpu_per_turn(before, after_cold, idle, len(cold))
        started = time.perf_counter()
        turns = drive(services, keys[:-1], load)
        elapsed = time.perf_counter() - started
        cpu = cpu_per_turn(after_cold, meter.sample(), idle, len(turns))
        for turn in [*cold, *turns]:
            thread_detail(services, keys[turn.tenant], turn)
        polls = services.polls
    print(
        f"  {label}: {len(turns)} turns in {elapsed:.1f} s; "
        f"{polls / (len(cold) + len(turns) + 1):.1f} entries requests per turn",
        flush=True,
    )
    return Run(turns, cpu, cold, cold_cpu)
