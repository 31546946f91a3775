"""A thousand event streams in one web process: no request thread and no database connection
each, one NOTIFY reaching them all. Prints what it measured (``pytest -s`` shows it)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from django.db import connection

from core.streams import Hub
from tests.support.event_streams import REPLAY, StreamClient, eventually, notify_events

pytestmark = pytest.mark.django_db(transaction=True)

STREAMS = 1000
# Connections opened before their heads are read (well under waitress's connection_limit).
BATCH = 100


def open_streams(port: int, count: int) -> list[StreamClient]:
    clients: list[StreamClient] = []
    while len(clients) < count:
        batch = [StreamClient(port, topic="crowd") for _ in range(min(BATCH, count - len(clients)))]
        for client in batch:
            client.read_head()
            assert client.status == 200
            assert client.read_chunk() == REPLAY
        clients += batch
    return clients


def database_connections() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
        (count,) = cursor.fetchone()
    return int(count)


def resident_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def thread_cpu_seconds(native_id: int | None) -> float:
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime, fields 14 and 15 of the whole line.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_thousand_streams_hold_no_request_thread_and_no_database_connection(
    stream_port: int, make_hub: Callable[..., Hub], listener_up: None
) -> None:
    hub = make_hub(keepalive=1.0, per_key=2 * STREAMS)
    # The pool, the read threads and the listener, as a process serving streams has them.
    warm = open_streams(stream_port, 2 * BATCH)
    notify_events("crowd")
    for client in warm:
        client.read_until(b"data: read 1")
        client.close()
    eventually(lambda: hub.open_count == 0)
    threads, connections, resident = (
        threading.active_count(),
        database_connections(),
        resident_bytes(),
    )

    started = time.monotonic()
    clients = open_streams(stream_port, STREAMS)
    opened_in = time.monotonic() - started
    eventually(lambda: hub.open_count == STREAMS)

    assert threading.active_count() == threads
    assert database_connections() <= connections
    print(f"\n{threads} threads, {connections} database connections, before as after")
    per_stream = (resident_bytes() - resident) / STREAMS

    started = time.monotonic()
    notify_events('crowd {"everyone": true}')
    for client in clients:
        client.read_until(b'"everyone": true')
    fanned_out_in = time.monotonic() - started
    assert database_connections() <= connections

    # Every stream's keep-alive comes once a second: the loop thread's share of one CPU.
    cpu = thread_cpu_seconds(hub._thread.native_id)
    time.sleep(5)
    keepalive_cpu = (thread_cpu_seconds(hub._thread.native_id) - cpu) / 5

    print(
        f"{STREAMS} streams opened in {opened_in:.2f} s ({opened_in / STREAMS * 1000:.2f} ms "
        f"each); resident memory {per_stream / 1024:.1f} KiB a stream (clients included); "
        f"one NOTIFY reached them all in {fanned_out_in * 1000:.0f} ms; "
        f"{STREAMS} keep-alives a second took {keepalive_cpu:.1%} of a CPU"
    )
    assert opened_in < 60
    assert fanned_out_in < 10
    for client in clients:
        client.close()
    eventually(lambda: hub.open_count == 0)
    assert hub.admitted("key") == 0
