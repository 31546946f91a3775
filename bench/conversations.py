"""Conversations benchmark: message throughput and cross-tenant isolation against a global lock.

Baseline = the origin system's behaviour, measured in the same run: the same service calls, but
serialised by one lock around all conversations (a transaction-scoped advisory lock standing in
for its process-wide mutex). This design locks only the conversation's own row.

Runs against its own database (created, migrated, dropped), never the dev database:

    .venv/bin/python bench/conversations.py [--threads 8] [--messages 100] [--hold-seconds 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from scratch_database import scratch_database
from threads import run_threads

GLOBAL_LOCK_KEY = 7_000_001


@contextmanager
def global_lock() -> Iterator[None]:
    from django.db import connection, transaction

    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [GLOBAL_LOCK_KEY])
        yield


def send(user_id: str, content: str, serialise: bool) -> float:
    from conversations.services import message_handle

    started = time.perf_counter()
    with global_lock() if serialise else nullcontext():
        message_handle(user_id=user_id, channel="web", content=content)
    return time.perf_counter() - started


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def throughput(label: str, threads: int, messages: int, serialise: bool) -> dict[str, float]:
    """Each thread is one tenant sending ``messages`` messages to its own conversation."""

    def tenant(number: int) -> list[float]:
        user_id = f"{label}-tenant-{number}"
        return [send(user_id, f"message {index}", serialise) for index in range(messages)]

    elapsed, latencies = run_threads(threads, tenant)
    result = {
        "rate": threads * messages / elapsed,
        "p50": statistics.median(latencies) * 1000,
        "p95": percentile(latencies, 0.95) * 1000,
    }
    print(
        f"  {label}: {result['rate']:8.1f} messages/s, p50 {result['p50']:6.2f} ms, "
        f"p95 {result['p95']:6.2f} ms ({threads} tenants x {messages} messages)",
        flush=True,
    )
    return result


def isolation(label: str, hold_seconds: float, serialise: bool) -> float:
    """How long a message to tenant B takes while tenant A's turn holds the lock."""
    from django.db import connection, transaction

    from conversations.models import Conversation
    from conversations.services import message_handle

    message_handle(user_id=f"{label}-a", channel="web", content="hello")
    message_handle(user_id=f"{label}-b", channel="web", content="hello")
    holding = threading.Event()
    release = threading.Event()

    def slow_turn() -> None:
        try:
            with global_lock() if serialise else transaction.atomic():
                Conversation.objects.for_update().get(user_id=f"{label}-a")
                holding.set()
                release.wait(hold_seconds)
        finally:
            connection.close()

    holder = threading.Thread(target=slow_turn)
    holder.start()
    holding.wait()
    result: dict[str, Any] = {}

    def other_tenant() -> None:
        try:
            result["latency"] = send(f"{label}-b", "are you there?", serialise)
        finally:
            connection.close()

    sender = threading.Thread(target=other_tenant)
    sender.start()
    sender.join()
    release.set()
    holder.join()
    latency_ms = float(result["latency"]) * 1000
    print(f"  {label}: other tenant's message took {latency_ms:8.2f} ms", flush=True)
    return latency_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--hold-seconds", type=float, default=1.0)
    options = parser.parse_args()

    with scratch_database("ironclaw_bench_conversations") as name:
        from django.conf import settings

        # The baseline's waits are the point of the measurement: let them finish.
        settings.CONVERSATION_LOCK_TIMEOUT_MS = 60_000
        print(f"database {name}, {os.cpu_count()} CPUs", flush=True)
        print("throughput (each thread one tenant, one conversation):")
        ours = throughput("row locks", options.threads, options.messages, serialise=False)
        base = throughput("baseline global lock", options.threads, options.messages, True)
        print(f"isolation (tenant A's turn holds its lock for {options.hold_seconds:.1f} s):")
        ours_wait = isolation("row-locks", options.hold_seconds, serialise=False)
        base_wait = isolation("global-lock", options.hold_seconds, serialise=True)

        print()
        print("== results (ratio = this design vs baseline; >1 is better)")
        print(
            f"messages/s:            {ours['rate']:9.1f}   baseline {base['rate']:9.1f} -> "
            f"x{ours['rate'] / base['rate']:.2f}"
        )
        print(
            f"message p50 ms:        {ours['p50']:9.2f}   baseline {base['p50']:9.2f} -> "
            f"x{base['p50'] / ours['p50']:.2f}"
        )
        print(
            f"message p95 ms:        {ours['p95']:9.2f}   baseline {base['p95']:9.2f} -> "
            f"x{base['p95'] / ours['p95']:.2f}"
        )
        print(
            f"other tenant while one turn holds its lock, ms: {ours_wait:9.2f}   baseline "
            f"{base_wait:9.2f} -> x{base_wait / ours_wait:.0f}"
        )


if __name__ == "__main__":
    main()
