"""What the streams benchmark reads off the running service (see bench/streams.py): the app
database's connections from ``pg_stat_activity``, the web processes' memory, the hub's open
streams from ``/metrics``, and the client process that holds the streams."""

from __future__ import annotations

import multiprocessing
import os
import re
import statistics
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import psutil

from bench.scratch_database import admin_connection
from bench.streams_client import Opened, Received, Watch, run
from bench.turns_cpu import process_role
from bench.turns_service import BenchFailure, Services

# A connection is one of the processes' notification listeners when its last statement was one
# of core.notify's LISTENs (it runs none after them; Procrastinate's worker listens too).
_CONNECTIONS_SQL = """
SELECT pid, query LIKE 'LISTEN %%', state = 'active'
FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend'
"""
SAMPLE_INTERVAL_SECONDS = 1.0
_SS_PID = re.compile(r"pid=(\d+),")
_GAUGE = re.compile(
    r"^ironclaw_(streams_open|db_pool_connections_in_use|db_pool_connections_open)"
    r"(?:\{[^}]*\})? ([0-9.e+-]+)$",
    re.M,
)
# Requests sent before reading the pools' gauges: both web processes get one but once in 2**19.
GAUGE_NUDGES = 20


def backend_clients() -> dict[int, int]:
    """The client process at the other end of each database backend's Unix socket, by the
    backend's pid (``ss``, Linux; empty when it cannot tell)."""
    try:
        lines = subprocess.run(
            ["ss", "-xpH"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return {}
    owners: dict[int, int] = {}  # socket inode -> the pid holding it
    backends: dict[int, int] = {}  # backend pid -> its client's socket inode
    for line in lines:
        # netid state recv-q send-q local-address local-inode peer-address peer-inode process
        fields = line.split()
        pids = _SS_PID.findall(line)
        if len(fields) < 8 or not pids or not fields[5].isdigit() or not fields[7].isdigit():
            continue
        owners[int(fields[5])] = int(pids[0])
        if ".s.PGSQL." in fields[4] and fields[7] != "0":
            backends[int(pids[0])] = int(fields[7])
    return {pid: owners[peer] for pid, peer in backends.items() if peer in owners}


@dataclass(frozen=True)
class Connections:
    total: int
    listening: int
    active: int  # running a statement at that instant
    by_role: dict[str, int] = field(default_factory=dict)  # connections of each role's processes

    def __str__(self) -> str:
        roles = ", ".join(f"{role} {count}" for role, count in sorted(self.by_role.items()))
        return (
            f"{self.total} ({self.listening} listening, {self.active} active"
            + (f"; {roles}" if roles else "")
            + ")"
        )


@dataclass(frozen=True)
class ConnectionSamples:
    samples: list[Connections]

    @property
    def mean(self) -> float:
        return statistics.fmean(s.total for s in self.samples) if self.samples else 0.0

    def role_max(self, role: str) -> int:
        return max((s.by_role.get(role, 0) for s in self.samples), default=0)

    def __str__(self) -> str:
        if not self.samples:
            return "no samples"
        roles = sorted({role for s in self.samples for role in s.by_role})
        return (
            f"max {max(s.total for s in self.samples)}, mean {self.mean:.1f} "
            f"({max(s.listening for s in self.samples)} listening, "
            f"at most {max(s.active for s in self.samples)} active at once"
            + "".join(f"; {role} max {self.role_max(role)}" for role in roles)
            + ")"
        )


class ConnectionCounter:
    """The app database's client connections, by the role of the process at their other end
    (``roles``: pid -> role), read on a connection to another database (so it does not count
    itself); ``sampling`` reads them in the background until it is stopped."""

    def __init__(self, database: str, roles: dict[int, str]):
        self.database = database
        self.roles = roles
        self._connection = admin_connection()
        self._lock = threading.Lock()

    def count(self) -> Connections:
        with self._lock:
            rows = self._connection.execute(_CONNECTIONS_SQL, [self.database]).fetchall()
        clients = backend_clients()
        by_role: Counter[str] = Counter()
        for backend, listening, _ in rows:
            role = self.roles.get(clients.get(backend, 0), "other")
            by_role[role + (" (listener)" if listening else "")] += 1
        return Connections(
            len(rows),
            sum(1 for row in rows if row[1]),
            sum(1 for row in rows if row[2]),
            dict(by_role) if clients else {},
        )

    def sampling(self) -> tuple[threading.Event, list[Connections]]:
        stop = threading.Event()
        samples: list[Connections] = []

        def sample() -> None:
            while not stop.wait(SAMPLE_INTERVAL_SECONDS):
                samples.append(self.count())

        threading.Thread(target=sample, daemon=True).start()
        return stop, samples

    def close(self) -> None:
        self._connection.close()


def process_roles(services: Services) -> dict[int, str]:
    """serve's children by role (bench/turns_cpu.py's names), and this driver."""
    roles = {child.pid: process_role(child) for child in services.serve.children()}
    return {**roles, services.serve.process.pid: "serve", os.getpid(): "driver"}


def web_processes(services: Services) -> list[psutil.Process]:
    return [child for child in services.serve.children() if "serve_web" in child.cmdline()]


def web_rss_mib(services: Services) -> float:
    """The web processes' resident memory, summed."""
    return sum(child.memory_info().rss for child in web_processes(services)) / 2**20


def service_gauges(services: Services) -> dict[str, float]:
    """The hubs' open streams and the pools' connections, summed over serve's processes, from
    /metrics. A process records its pool's figures after each request it serves (and a worker
    after each job): a few requests first, so both web processes record theirs now (the kernel
    spreads connections between them at random)."""
    for _ in range(GAUGE_NUDGES):
        with suppress(OSError), urllib.request.urlopen(f"{services.base_url}/healthz", timeout=10):
            pass
    try:
        with urllib.request.urlopen(f"{services.base_url}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return {}
    gauges: dict[str, float] = {}
    for name, value in _GAUGE.findall(text):
        gauges[name] = gauges.get(name, 0.0) + float(value)
    return gauges


class StreamClient:
    """The client process (bench/streams_client.py), spawned: a fresh interpreter, none of the
    driver's threads or connections."""

    def __init__(self, base_url: str, watches: list[Watch], concurrency: int):
        host, port = base_url.removeprefix("http://").rsplit(":", 1)
        context = multiprocessing.get_context("spawn")
        self._pipe, theirs = context.Pipe()
        self.process = context.Process(
            target=run, args=(theirs, host, int(port), watches, concurrency), daemon=True
        )
        self.process.start()
        assert self.process.pid is not None
        self.ps = psutil.Process(self.process.pid)

    def _ask(self, command: str, timeout: float = 300) -> Any:
        self._pipe.send(command)
        deadline = time.monotonic() + timeout
        while not self._pipe.poll(1):
            if not self.process.is_alive():
                raise BenchFailure(f"the stream client exited ({self.process.exitcode})")
            if time.monotonic() > deadline:
                raise BenchFailure(f"the stream client did not answer {command!r} in {timeout} s")
        return self._pipe.recv()

    def open(self) -> Opened:
        opened: Opened = self._ask("open")
        return opened

    def plain(self) -> Opened:
        """One plain GET a stream, as many at a time as the opens (the control)."""
        done: Opened = self._ask("plain")
        return done

    def take(self) -> tuple[Received, int]:
        """What the active streams received since the last take, and how many are open."""
        taken: tuple[Received, int] = self._ask("take")
        return taken

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return times.user + times.system

    def close(self) -> Received:
        try:
            received: Received = self._ask("close", timeout=30)
        finally:
            self.process.join(10)
            if self.process.is_alive():
                self.process.kill()
        return received
