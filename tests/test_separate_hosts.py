"""Separate hosts, simulated: two web hosts (``serve --no-worker``), a turn worker host and a
background worker host, each a process group of its own with its own home, temporary and var
folders, sharing nothing but ``DATABASE_URL`` (a PostgreSQL on 127.0.0.1) and ``SECRET_KEY``.

Tenants post messages through one web host and wait for the replies through the other (the
Python client, which retries under an ``Idempotency-Key``) and write a note each turn, while the
test SIGKILLs web host A whole and reboots it, SIGKILLs the turn worker host and starts another,
restarts PostgreSQL (``pg_ctl restart -m fast``) and SIGKILLs its postmaster. Then, from the
database: every accepted message stored exactly once, every turn ended with exactly one reply,
no job or thread stuck, every note indexed by the background host (and found by a search through
the other web host), and both web hosts ready again. Nothing in the test heals the service: the
hosts do it themselves. It runs twice: on PostgreSQL directly, and with the web hosts behind
PgBouncer in transaction mode (``DATABASE_DIRECT_URL`` the cluster), which rides out the same
restarts.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from ironclaw_client import Client, RetryPolicy

from tests.support.hosts import Host, host_env
from tests.support.pgbouncer import pgbouncer, pgbouncer_missing
from tests.support.postgres_cluster import PostgresCluster
from tests.support.serve import manage, readyz_status, wait_until_ready
from tests.support.servers import free_port

TENANTS = 6
# The hosts' shared settings beyond DATABASE_URL and SECRET_KEY: quick heartbeats and sweeps, so
# a dead turn worker's turns and a stalled job come back within seconds.
SETTINGS = {
    "ENGINE_MODEL": "echo",
    "ENGINE_ECHO_LATENCY_MS": "200",
    "ENGINE_LEASE_SECONDS": "5",
    "ENGINE_HEARTBEAT_SECONDS": "1",
    "TURN_WORKER_DEAD_SECONDS": "3",
    "TURN_WORKER_SWEEP_SECONDS": "1",
    "WORKER_HEARTBEAT_SECONDS": "1",
    "WORKER_STALLED_SECONDS": "5",
    "STALLED_JOBS_SWEEP_SECONDS": "1",
    "RATE_LIMIT_PER_MINUTE": "0",
    "DATABASE_POOL_SIZE": "10",
}
# A web host leaves the balancer while a kind of worker is missing from the whole deployment.
WEB_SETTINGS = {
    "WEB_CONCURRENCY": "1",
    "WEB_THREADS": "16",
    "READYZ_REQUIRE_WORKER": "true",
    "READYZ_WORKERS": "turns,background",
}
# Generous for a slow CI machine: each wait polls and ends as soon as its condition holds.
READY_TIMEOUT = 120
PROGRESS_TIMEOUT = 90
DRAIN_TIMEOUT = 120
# A client that rides out a host's reboot and a database restart.
PATIENT = RetryPolicy(max_attempts=100_000, max_seconds=120, base_delay=0.1, max_delay=1.0)
UNFINISHED_JOBS_SQL = (
    "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing') "
    "AND task_name NOT IN (SELECT DISTINCT task_name FROM procrastinate_periodic_defers)"
)


@dataclass
class Traffic:
    """What the tenants did, as they saw it."""

    accepted: list[str] = field(default_factory=list)
    replies: int = 0
    notes: dict[int, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Tenant(threading.Thread):
    """Posts through one web host, waits for the reply through the other, writes its note; the
    next message goes the other way round. Until told to stop."""

    def __init__(self, n: int, clients: list[Client], stop: threading.Event, traffic: Traffic):
        super().__init__(name=f"tenant-{n}", daemon=True)
        self.n, self.clients, self.stop_event, self.traffic = n, clients, stop, traffic

    def run(self) -> None:
        count = 0
        while not self.stop_event.is_set():
            count += 1
            content = f"tenant {self.n} message {count}"
            post, read = self.clients[count % 2], self.clients[(count + 1) % 2]
            try:
                sent = post.send_message("web", content)
                with self.traffic.lock:
                    self.traffic.accepted.append(content)
                read.wait_for_reply(sent["conversation_id"], after_seq=sent["seq"], timeout=120)
                with self.traffic.lock:
                    self.traffic.replies += 1
                note = f"note {count} of tenant {self.n}: marker{self.n}x{count} " + "word " * 40
                post.write_document(f"notes/{self.n}.md", note)
                with self.traffic.lock:
                    self.traffic.notes[self.n] = note
            except Exception as error:
                with self.traffic.lock:
                    self.traffic.errors.append(f"{content}: {type(error).__name__}: {error}")
                return


@dataclass
class Deployment:
    """The hosts on one database, and how to read what went wrong."""

    cluster: PostgresCluster
    root: Path
    settings: dict[str, str]
    hosts: dict[str, Host] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, command: list[str], extra: dict[str, str] | None = None) -> Host:
        folder = self.root / name
        host = Host(name, command, host_env(folder, {**self.settings, **(extra or {})}), folder)
        self.hosts[name] = host
        host.start()
        return host

    def add_web(self, name: str) -> Host:
        port = free_port()
        self.urls[name] = f"http://127.0.0.1:{port}"
        command = ["serve", "--no-worker", "--host", "127.0.0.1", "--port", str(port)]
        return self.add(name, command, WEB_SETTINGS)

    def diagnostics(self) -> str:
        logs = [host.output_tail() for host in self.hosts.values()]
        return "\n".join([*logs, "--- postgres:", self.cluster.log_tail()])

    def wait_ready(self, *names: str) -> None:
        for name in names:
            try:
                wait_until_ready(self.urls[name], timeout=READY_TIMEOUT)
            except AssertionError as error:
                raise AssertionError(f"web host {name}: {error}\n{self.diagnostics()}") from None


def _query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, connect_timeout=5) as connection:
        return connection.execute(sql, params).fetchall()


def _wait(condition: Callable[[], bool], timeout: float, what: str, deployment: Deployment) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s\n{deployment.diagnostics()}")
        time.sleep(0.2)


def _mark(traffic: Traffic) -> tuple[float, int]:
    """When a fault begins, and the replies so far."""
    with traffic.lock:
        return time.monotonic(), traffic.replies


def _progress(
    traffic: Traffic, deployment: Deployment, fault: str, mark: tuple[float, int]
) -> None:
    """Wait until the tenants got as many more replies as there are tenants since ``mark``;
    print how long after it that was (``pytest -s`` shows it)."""
    started, replies = mark
    _wait(
        lambda: traffic.replies >= replies + TENANTS or bool(traffic.errors),
        PROGRESS_TIMEOUT,
        f"replies after the fault ({fault})",
        deployment,
    )
    assert not traffic.errors, f"after {fault}: {traffic.errors}\n{deployment.diagnostics()}"
    print(f"{fault}: {TENANTS} more replies {time.monotonic() - started:.1f} s after it began")


def _drained(url: str) -> bool:
    """No live thread, no job left to run, no document waiting for its index."""
    try:
        [(live,)] = _query(
            url,
            "SELECT count(*) FROM conversations_thread "
            "WHERE state NOT IN ('completed', 'failed', 'stopped')",
        )
        [(jobs,)] = _query(url, UNFINISHED_JOBS_SQL)
        [(pending,)] = _query(
            url,
            "SELECT count(*) FROM workspace_document "
            "WHERE NOT is_runtime AND index_state <> 'indexed'",
        )
    except psycopg.OperationalError:
        return False
    return live == jobs == pending == 0


@pytest.fixture(params=["direct", "pgbouncer"])
def deployment(
    request: pytest.FixtureRequest, postgres_cluster: PostgresCluster, tmp_path: Path
) -> Iterator[Deployment]:
    """The hosts on the cluster, directly or (``pgbouncer``) with PgBouncer in transaction mode in
    front of it as DATABASE_URL and the cluster as DATABASE_DIRECT_URL: web hosts then go
    through PgBouncer, workers and migrations straight to PostgreSQL."""
    with ExitStack() as stack:
        settings = {
            **SETTINGS,
            "DATABASE_URL": postgres_cluster.url,
            "SECRET_KEY": f"hosts-{secrets.token_urlsafe(50)}",
        }
        if request.param == "pgbouncer":
            if (missing := pgbouncer_missing()) is not None:
                pytest.skip(missing)
            bouncer = stack.enter_context(
                pgbouncer(server_host=postgres_cluster.host, server_port=postgres_cluster.port)
            )
            settings["DATABASE_URL"] = bouncer.url(postgres_cluster.database)
            settings["DATABASE_DIRECT_URL"] = postgres_cluster.url
        deployment = Deployment(postgres_cluster, tmp_path, settings)
        # The release step, once, from a machine of its own.
        manage(host_env(tmp_path / "deploy", settings), "migrate", "--noinput")
        try:
            yield deployment
        finally:
            for host in deployment.hosts.values():
                host.stop()


def test_separate_hosts_sharing_only_the_database_lose_nothing_through_kills_and_restarts(
    deployment: Deployment,
) -> None:
    cluster = deployment.cluster
    keys = manage(
        host_env(deployment.root / "deploy", deployment.settings),
        "shell",
        "--verbosity=0",
        "-c",
        "from accounts.services import api_key_create\n"
        f"for n in range({TENANTS}):\n"
        "    print(api_key_create(name='hosts', user_id=f'tenant-{n}', is_service=False).raw_key)",
    ).split()
    deployment.add_web("web-a")
    deployment.add_web("web-b")
    deployment.add("turns-1", ["worker", "--kind", "turns"], {"ENGINE_CONCURRENCY": "4"})
    deployment.add("background", ["worker", "--kind", "background"])
    # Ready means the database, the migrations, and a live worker of each kind on other hosts.
    deployment.wait_ready("web-a", "web-b")

    traffic, stop = Traffic(), threading.Event()
    clients = [
        [Client(deployment.urls[web], key, retry=PATIENT, timeout=40) for web in ("web-a", "web-b")]
        for key in keys
    ]
    tenants = [Tenant(n, clients[n], stop, traffic) for n in range(TENANTS)]
    for tenant in tenants:
        tenant.start()
    try:
        _progress(traffic, deployment, "start", _mark(traffic))

        # Web host A loses power: all its processes at once. It boots again on its address.
        mark = _mark(traffic)
        deployment.hosts["web-a"].kill()
        assert readyz_status(deployment.urls["web-a"]) == 0
        deployment.hosts["web-a"].start()
        deployment.wait_ready("web-a", "web-b")
        _progress(traffic, deployment, "web host A killed and rebooted", mark)

        # The turn worker host dies mid-turn; another takes its place (and its turns, once the
        # dead one's heartbeat is TURN_WORKER_DEAD_SECONDS old).
        turns_1 = deployment.hosts["turns-1"]
        assert turns_1.process is not None
        turns_1_pid = turns_1.process.pid
        # Killed mid-turn: once it holds a lease (its owner names the worker's pid).
        in_flight: list[tuple[Any, ...]] = []

        def turns_in_flight() -> bool:
            in_flight[:] = _query(
                cluster.url,
                "SELECT id FROM conversations_thread WHERE state = 'running' AND lease_owner ~ %s",
                f"^turn-worker:[0-9]+:[^:]+:{turns_1_pid}:",
            )
            return bool(in_flight)

        _wait(turns_in_flight, PROGRESS_TIMEOUT, "a turn running on turns-1", deployment)
        mark = _mark(traffic)
        turns_1.kill()
        deployment.add("turns-2", ["worker", "--kind", "turns"], {"ENGINE_CONCURRENCY": "4"})
        _progress(traffic, deployment, "turn worker host killed and replaced", mark)
        interrupted = [str(row[0]) for row in in_flight]

        def interrupted_answered() -> bool:
            [(answered,)] = _query(
                cluster.url,
                "SELECT count(*) FROM conversations_thread "
                "WHERE id::text = ANY(%s) AND state = 'completed'",
                interrupted,
            )
            return bool(answered == len(interrupted))

        _wait(interrupted_answered, PROGRESS_TIMEOUT, "the killed worker's turns", deployment)
        took = time.monotonic() - mark[0]
        print(f"{len(interrupted)} turns interrupted, all answered {took:.1f} s after the kill")

        # PostgreSQL restarts: every connection of every host is cut.
        mark = _mark(traffic)
        cluster.restart()
        _progress(traffic, deployment, "PostgreSQL restarted (fast)", mark)

        # PostgreSQL crashes: its postmaster SIGKILLed, then started again (crash recovery).
        mark = _mark(traffic)
        cluster.kill()
        cluster.start()
        _progress(traffic, deployment, "PostgreSQL postmaster killed and started", mark)
    finally:
        stop.set()
        for tenant in tenants:
            tenant.join(timeout=180)

    assert not traffic.errors, f"{traffic.errors}\n{deployment.diagnostics()}"
    assert not any(tenant.is_alive() for tenant in tenants), "a tenant is still waiting"
    _wait(lambda: _drained(cluster.url), DRAIN_TIMEOUT, "drained", deployment)

    # Every accepted message stored exactly once, and none stored twice.
    stored = dict(
        _query(
            cluster.url,
            "SELECT content, count(*) FROM conversations_conversationentry "
            "WHERE sender = 'user' GROUP BY content",
        )
    )
    assert len(traffic.accepted) >= 5 * TENANTS
    assert [m for m in traffic.accepted if stored.get(m) != 1] == []
    assert [content for content, n in stored.items() if n != 1] == []
    assert traffic.replies == len(traffic.accepted)

    # Every turn ended, with exactly one reply.
    threads = _query(
        cluster.url,
        "SELECT t.id, t.state, t.outcome IS NOT NULL, count(e.id) FROM conversations_thread t "
        "LEFT JOIN conversations_conversationentry e ON e.thread_id = t.id AND e.sender = 'agent' "
        "GROUP BY t.id",
    )
    assert len(threads) >= len(traffic.accepted) // 2
    # Among them the turns the turn worker host was running when it was killed.
    assert [row for row in threads if row[1:] != ("completed", True, 1)] == []

    # Each tenant's last note is the one stored, indexed, and found through the other web host.
    for n, note in traffic.notes.items():
        [(content, state)] = _query(
            cluster.url,
            "SELECT content, index_state FROM workspace_document WHERE user_id = %s AND path = %s",
            f"tenant-{n}",
            f"notes/{n}.md",
        )
        assert (content, state) == (note, "indexed")
        marker = note.split()[5]
        found = clients[n][1].search(marker, mode="fts")["results"]
        assert [hit["path"] for hit in found][:1] == [f"notes/{n}.md"], found

    for name in ("web-a", "web-b"):
        assert readyz_status(deployment.urls[name]) == 200, deployment.diagnostics()
    print(f"{len(traffic.accepted)} messages, {len(threads)} turns, {len(traffic.notes)} notes")
    for pair in clients:
        for client in pair:
            client.close()
