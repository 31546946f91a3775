"""Conversations benchmark: message throughput and cross-tenant isolation against a global lock.

Baseline = the behaviour of the origin system (the Rust agent platform this service re-creates,
whose engine-state writes were indexed like documents under one global lock), measured in the same
run: the same service calls, but serialised by one lock around all conversations. That lock is
modelled as the origin had it: an in-process mutex (its RwLock) taken before any database work, so
a message waiting for it holds no connection and adds no round trip. This design locks only the
conversation's own row.

Runs against its own database (created, migrated, dropped), never the dev database:

    .venv/bin/python bench/conversations.py [--threads 8] [--messages 100] [--hold-seconds 1]
        [--hot-threads 1 4] [--hot-iterations 300] [--hot-path-only]

The hot-path section compares each message path and a 50 KB runtime state write with a raw psycopg
transaction doing the same writes, and LangGraph's PostgresSaver.put of the same state as a peer
(requirements-bench.txt).
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from scratch_database import scratch_database
from threads import run_threads

# The origin's process-wide mutex: every tenant's message in this process waits for it.
_GLOBAL_MUTEX = threading.Lock()


@contextmanager
def global_lock() -> Iterator[None]:
    from django.db import connection

    # A waiter gives its pooled connection back first: the origin's tasks held none while queued.
    connection.close()
    with _GLOBAL_MUTEX:
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
            with global_lock() if serialise else nullcontext(), transaction.atomic():
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


# --- Hot path against a raw psycopg transaction ------------------------------------------------
#
# Each "raw" transaction does the inserts and updates the service does, as a hand-written client
# would: no lookups beyond what it must return, no ORM. The ratio (service rate / raw rate) is
# what the service's own work costs on top of the database's.

STATE_BYTES = 50 * 1024


def raw_connection() -> Any:
    import psycopg
    from django.conf import settings

    database = settings.DATABASES["default"]
    return psycopg.connect(
        host=database["HOST"] or None,
        port=database["PORT"] or None,
        user=database["USER"] or None,
        password=database["PASSWORD"] or None,
        dbname=database["NAME"],
        autocommit=True,
    )


def engine_state(step: int) -> dict[str, Any]:
    """An engine's state whose JSON is about STATE_BYTES long, different at every step."""
    filler = "lorem ipsum dolor sit amet " * (STATE_BYTES // 27)
    return {"step": step, "messages": [{"role": "assistant", "content": filler}]}


def thread_stop_sql() -> str:
    # Untimed, between two spawns: the thread ends so the next message spawns again.
    return (
        "UPDATE conversations_thread SET state = 'stopped', tracked = false,"
        " finished_at = now() WHERE conversation_id = %s AND tracked"
    )


def service_case(case: str, iterations: int) -> Callable[[int], list[float]]:
    import json

    from django.db import connection

    from conversations.services import message_handle
    from workspace.services import document_write

    def work(number: int) -> list[float]:
        user_id = f"hot-{case}-{number}-{uuid.uuid4().hex[:8]}"
        latencies = []
        if case in ("inject", "spawn"):
            first = message_handle(user_id=user_id, channel="web", content="hello")
        for step in range(iterations):
            if case == "spawn":
                with connection.cursor() as cursor:
                    cursor.execute(thread_stop_sql(), [first.conversation_id])
            content = json.dumps(engine_state(step)) if case == "state" else f"message {step}"
            started = time.perf_counter()
            if case == "state":
                document_write(user_id=user_id, path="engine/.runtime/state.json", content=content)
            else:
                message_handle(user_id=user_id, channel="web", content=content)
            latencies.append(time.perf_counter() - started)
        return latencies

    return work


_RAW_ENTRY_SQL = (
    "INSERT INTO conversations_conversationentry (id, conversation_id, user_id, seq, sender,"
    " content, thread_id, delivered_at, created_at, metadata) VALUES {}"
)
_RAW_THREAD_SQL = (
    "INSERT INTO conversations_thread (id, user_id, conversation_id, kind, state, goal, tracked,"
    " lease_owner, cancel_requested, claim_count, step_count, tokens_used, input_tokens,"
    " output_tokens, cost_usd, model_time_ms, enqueued_at, model_calls, metadata, start_seq,"
    " event_seq, created_at, updated_at) VALUES (%s, %s, %s, 'foreground', 'created', %s, true,"
    " '', false, 0, 0, 0, 0, 0, 0, 0, now(), '[]', %s, %s, 1, now(), now())"
)
_RAW_UPSERT_SQL = (
    "INSERT INTO workspace_document AS d (id, user_id, path, content, content_hash, metadata,"
    " is_runtime, index_state, indexed_hash, created_at, updated_at)"
    " VALUES (%s, %s, %s, %s, %s, '{}', true, 'skipped', '', now(), now())"
    " ON CONFLICT (user_id, path) DO UPDATE SET content = EXCLUDED.content,"
    " content_hash = EXCLUDED.content_hash, updated_at = now()"
)


def raw_case(case: str, iterations: int) -> Callable[[int], list[float]]:
    import hashlib
    import json

    from psycopg.types.json import Jsonb

    from conversations.services import message_handle

    def work(number: int) -> list[float]:
        user_id = f"raw-{case}-{number}-{uuid.uuid4().hex[:8]}"
        latencies = []
        conversation_id = None
        if case in ("inject", "spawn"):
            # The conversation and its first thread, made the service's way (untimed).
            conversation_id = message_handle(
                user_id=user_id, channel="web", content="hello"
            ).conversation_id
        with raw_connection() as raw:
            thread_id = raw.execute(
                "SELECT id FROM conversations_thread WHERE conversation_id = %s",
                [conversation_id],
            ).fetchone()
            for step in range(iterations):
                if case == "spawn":
                    raw.execute(thread_stop_sql(), [conversation_id])
                content = f"message {step}"
                started = time.perf_counter()
                if case == "state":
                    content = json.dumps(engine_state(step))
                    digest = "sha256:" + hashlib.sha256(content.encode()).hexdigest()
                    raw.execute(
                        _RAW_UPSERT_SQL,
                        [uuid.uuid4(), user_id, "engine/.runtime/state.json", content, digest],
                    )
                elif case == "inject":
                    with raw.transaction():
                        (seq,) = raw.execute(
                            "UPDATE conversations_conversation SET last_seq = last_seq + 1,"
                            " updated_at = now() WHERE id = %s RETURNING last_seq",
                            [conversation_id],
                        ).fetchone()
                        raw.execute(
                            _RAW_ENTRY_SQL.format(
                                "(%s, %s, %s, %s, 'user', %s, %s, NULL, now(), '{}')"
                            ),
                            [uuid.uuid4(), conversation_id, user_id, seq, content, thread_id[0]],
                        )
                else:
                    new_thread = uuid.uuid4()
                    with raw.transaction():
                        (seq,) = raw.execute(
                            "UPDATE conversations_conversation SET last_seq = last_seq + 2,"
                            " updated_at = now() WHERE id = %s RETURNING last_seq",
                            [conversation_id],
                        ).fetchone()
                        raw.execute(
                            _RAW_THREAD_SQL,
                            [
                                new_thread,
                                user_id,
                                conversation_id,
                                content,
                                Jsonb({"goal_entry_seqs": [seq - 1]}),
                                # Its "Thread started" entry, below, as the service's spawn.
                                seq,
                            ],
                        )
                        raw.execute(
                            _RAW_ENTRY_SQL.format(
                                "(%s, %s, %s, %s, 'user', %s, %s, now(), now(), '{}'),"
                                " (%s, %s, %s, %s, 'system', 'Thread started', %s, NULL, now(),"
                                " '{}')"
                            ),
                            [
                                uuid.uuid4(),
                                conversation_id,
                                user_id,
                                seq - 1,
                                content,
                                new_thread,
                                uuid.uuid4(),
                                conversation_id,
                                user_id,
                                seq,
                                new_thread,
                            ],
                        )
                latencies.append(time.perf_counter() - started)
        return latencies

    return work


def langgraph_case(iterations: int) -> Callable[[int], list[float]]:
    from langgraph.checkpoint.base import empty_checkpoint
    from langgraph.checkpoint.postgres import PostgresSaver
    from psycopg.rows import dict_row

    def work(number: int) -> list[float]:
        latencies = []
        with raw_connection() as raw:
            raw.row_factory = dict_row
            saver = PostgresSaver(raw)
            config: Any = {
                "configurable": {
                    "thread_id": f"lg-{number}-{uuid.uuid4().hex[:8]}",
                    "checkpoint_ns": "",
                }
            }
            for step in range(iterations):
                checkpoint = empty_checkpoint()
                checkpoint["channel_values"] = {"state": engine_state(step)}
                checkpoint["channel_versions"] = {"state": step + 1}
                started = time.perf_counter()
                config = saver.put(config, checkpoint, {"step": step}, {"state": step + 1})
                latencies.append(time.perf_counter() - started)
        return latencies

    return work


def hot_path(thread_counts: list[int], iterations: int) -> None:
    from langgraph.checkpoint.postgres import PostgresSaver

    with raw_connection() as raw:
        PostgresSaver(raw).setup()

    def rate(work: Callable[[int], list[float]], threads: int) -> float:
        elapsed, _ = run_threads(threads, work)
        return threads * iterations / elapsed

    print(f"hot path against a raw psycopg transaction ({iterations} calls per thread):")
    print(f"  {'case':<34}{'threads':>8}{'service/s':>11}{'raw/s':>10}{'ratio':>8}")
    for threads in thread_counts:
        for case, label in (
            ("inject", "message_handle inject"),
            ("spawn", "message_handle spawn"),
            ("state", "50 KB runtime document_write"),
        ):
            ours = rate(service_case(case, iterations), threads)
            raw_rate = rate(raw_case(case, iterations), threads)
            print(
                f"  {label:<34}{threads:>8}{ours:>11.0f}{raw_rate:>10.0f}{ours / raw_rate:>7.2f}x",
                flush=True,
            )
            if case == "state":
                peer = rate(langgraph_case(iterations), threads)
                print(
                    f"  {'  LangGraph PostgresSaver.put':<34}{threads:>8}{peer:>11.0f}"
                    f"{raw_rate:>10.0f}{peer / raw_rate:>7.2f}x",
                    flush=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--hold-seconds", type=float, default=1.0)
    parser.add_argument("--hot-threads", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--hot-iterations", type=int, default=300)
    parser.add_argument("--hot-path-only", action="store_true")
    options = parser.parse_args()

    with scratch_database("ironclaw_bench_conversations") as name:
        from django.conf import settings

        # The baseline's waits are the point of the measurement: let them finish.
        settings.CONVERSATION_LOCK_TIMEOUT_MS = 60_000
        print(f"database {name}, {os.cpu_count()} CPUs", flush=True)
        hot_path(options.hot_threads, options.hot_iterations)
        if options.hot_path_only:
            return
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
        # Not a ratio: the baseline's wait is --hold-seconds by construction, so this line only
        # illustrates what one tenant's slow turn does to another's message in each design.
        print(
            f"illustration: another tenant's message while one turn holds its lock for "
            f"{options.hold_seconds:.1f} s: {ours_wait:.2f} ms here, {base_wait:.0f} ms in the "
            "baseline"
        )


if __name__ == "__main__":
    main()
