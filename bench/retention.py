"""Retention benchmark: the database's size over 10,000 turns' worth of engine checkpoints, without
retention and with it.

Each turn leaves what a finished turn of the built-in engine leaves: a completed thread row, its
checkpoint ``engine/.runtime/threads/<thread_id>.json`` (20 to 50 KB of JSON: the turn's messages
and steps, like the growing state of bench/turns.py, but words rather than the echo model's dots,
so it compresses as real text does) and its conversation's checkpoint
``engine/.runtime/conversations/<conversation_id>.json``. The engine does not run: conversations
and threads are inserted with the ORM (``bulk_create``), and each checkpoint is written once, in
its final state, through the runtime write a turn's checkpoint makes (``document_write``).

Time is simulated: round r is day r. Its threads finish on day r and its checkpoints are stamped
with that day; the prune runs with day r as its now and a retention of ``--keep-days``, so it keeps
the checkpoints of the last rounds. Half of a round's turns go to ``--ongoing`` conversations that
get turns every round (their checkpoint is rewritten, so kept), half to new conversations that
never hear again (their checkpoint ages out with their thread). After every round a plain VACUUM
stands in for autovacuum, in both configurations, so the space freed is reused as it would be on a
live server.

Two configurations, each on a scratch database of its own: without retention (checkpoints stay
for ever, as before) and with ``checkpoints_prune`` after every round. Per round: the checkpoint
documents, ``pg_total_relation_size('workspace_document')`` (heap, TOAST and indexes) and the
whole database's size; with retention also what the prune deleted and how long it took.

    .venv/bin/python bench/retention.py [--rounds 10] [--turns-per-round 1000] [--keep-days 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from scratch_database import scratch_database

TENANTS = 50
STEP_WORDS = (150, 400)
CHECKPOINT_BYTES = (20 * 1024, 50 * 1024)
PARAGRAPHS = 2000

random.seed(7)
VOCABULARY = [
    "".join(random.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(random.randint(3, 9)))
    for _ in range(5000)
]
# Steps are drawn from a pool: a checkpoint holds a dozen of two thousand, so it repeats none.
STEP_TEXTS = [
    " ".join(random.choice(VOCABULARY) for _ in range(random.randint(*STEP_WORDS)))
    for _ in range(PARAGRAPHS)
]


@dataclass
class Round:
    turns: int
    checkpoints: int
    document_bytes: int
    database_bytes: int
    deleted: int = 0
    prune_seconds: float = 0.0
    batches: int = 0


def thread_checkpoint(thread_id: uuid.UUID, conversation_id: uuid.UUID, rng: random.Random) -> str:
    """A finished turn's state as the engine checkpoints it (engine.checkpoint.TurnState)."""
    size = rng.randint(*CHECKPOINT_BYTES)
    messages: list[dict[str, object]] = [{"role": "user", "content": rng.choice(STEP_TEXTS)[:400]}]
    steps: list[dict[str, object]] = []
    length = 0
    while length < size:
        text = rng.choice(STEP_TEXTS)
        messages.append({"role": "assistant", "content": text, "final": False})
        steps.append(
            {
                "n": len(steps) + 1,
                "input_tokens": rng.randint(500, 5000),
                "output_tokens": len(text) // 4,
                "cost_usd": 0.0,
                "model_ms": rng.randint(200, 3000),
                "started_at": "2026-01-01T00:00:00+00:00",
                "ended_at": "2026-01-01T00:00:01+00:00",
            }
        )
        length += len(text) + 220
    messages[-1]["final"] = True
    return json.dumps(
        {
            "version": 1,
            "thread_id": str(thread_id),
            "conversation_id": str(conversation_id),
            "user_id": "",
            "started_at": "2026-01-01T00:00:00+00:00",
            "messages": messages,
            "steps": steps,
            "events": [],
            "status": "completed",
            "reply_from": 0,
            "steps_from": 0,
        }
    )


def sizes() -> tuple[int, int, int]:
    """Checkpoint documents, workspace_document's total size, the database's size."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT (SELECT count(*) FROM workspace_document WHERE is_runtime),"
            " pg_total_relation_size('workspace_document'),"
            " pg_database_size(current_database())"
        )
        checkpoints, document_bytes, database_bytes = cursor.fetchone()
    return checkpoints, document_bytes, database_bytes


def play_round(
    day: datetime, ongoing: list[tuple[str, uuid.UUID]], turns: int, rng: random.Random
) -> None:
    """``turns`` finished turns on ``day``: half in the ongoing conversations, half in new ones."""
    from django.db import connection

    from conversations.models import Conversation, Thread, ThreadState
    from engine.checkpoint import conversation_checkpoint_path, thread_checkpoint_path
    from workspace.services import document_write

    new = [
        Conversation(user_id=f"tenant-{rng.randrange(TENANTS):02d}", channel=f"web:{uuid.uuid4()}")
        for _ in range(turns - turns // 2)
    ]
    Conversation.objects.bulk_create(new)
    talking = ongoing[: turns // 2] + [(c.user_id, c.id) for c in new]
    threads = [
        Thread(
            user_id=user_id,
            conversation_id=conversation_id,
            state=ThreadState.COMPLETED,
            tracked=False,
            goal="hello",
            enqueued_at=day,
            claimed_at=day,
            started_at=day,
            finished_at=day,
            outcome={"kind": "completed", "response": "done"},
        )
        for user_id, conversation_id in talking
    ]
    Thread.objects.bulk_create(threads)
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        started = cursor.fetchone()[0]
    for thread in threads:
        assert thread.conversation_id is not None
        document_write(
            user_id=thread.user_id,
            path=thread_checkpoint_path(thread.id),
            content=thread_checkpoint(thread.id, thread.conversation_id, rng),
        )
        document_write(
            user_id=thread.user_id,
            path=conversation_checkpoint_path(thread.conversation_id),
            content=json.dumps(
                {"conversation_id": str(thread.conversation_id), "thread_id": str(thread.id)}
            ),
        )
    # The round's checkpoints were written on its day (one extra row version each: a live
    # checkpoint is rewritten after every step anyway).
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE workspace_document SET updated_at = %s WHERE updated_at >= %s",
            [day, started],
        )


def run_configuration(label: str, options: argparse.Namespace, *, retention: bool) -> list[Round]:
    rounds: list[Round] = []
    with scratch_database(f"ironclaw_bench_retention_{label}"):
        from django.db import connection
        from django.utils import timezone

        from conversations.models import Conversation
        from engine.retention import checkpoints_prune

        rng = random.Random(11)
        ongoing_rows = [
            Conversation(user_id=f"tenant-{number % TENANTS:02d}", channel=f"web:{number}")
            for number in range(options.ongoing)
        ]
        Conversation.objects.bulk_create(ongoing_rows)
        ongoing = [(c.user_id, c.id) for c in ongoing_rows]
        first_day = timezone.now() - timedelta(days=options.rounds + 1)
        print(f"== {label}", flush=True)
        print(
            "round  turns  checkpoints  workspace_document MB  database MB"
            + ("  deleted  prune s  batches" if retention else ""),
            flush=True,
        )
        for number in range(1, options.rounds + 1):
            day = first_day + timedelta(days=number)
            rng.shuffle(ongoing)
            play_round(day, ongoing, options.turns_per_round, rng)
            done = Round(
                turns=number * options.turns_per_round,
                checkpoints=0,
                document_bytes=0,
                database_bytes=0,
            )
            if retention:
                started = time.perf_counter()
                pruned = checkpoints_prune(older_than_days=options.keep_days, now=day)
                done.prune_seconds = time.perf_counter() - started
                done.deleted, done.batches = pruned.checkpoints, pruned.batches
            with connection.cursor() as cursor:
                cursor.execute("VACUUM workspace_document")
            done.checkpoints, done.document_bytes, done.database_bytes = sizes()
            rounds.append(done)
            line = (
                f"{number:5d}  {done.turns:5d}  {done.checkpoints:11d}  "
                f"{done.document_bytes / 2**20:21.1f}  {done.database_bytes / 2**20:11.1f}"
            )
            if retention:
                line += f"  {done.deleted:7d}  {done.prune_seconds:7.2f}  {done.batches:7d}"
            print(line, flush=True)
        connection.close()
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--turns-per-round", type=int, default=1000)
    parser.add_argument("--keep-days", type=int, default=3, help="the retention, in rounds")
    parser.add_argument("--ongoing", type=int, default=500, help="conversations talked to daily")
    options = parser.parse_args()
    if options.ongoing < options.turns_per_round // 2:
        parser.error("--ongoing must be at least half of --turns-per-round")

    print(
        f"{options.rounds} rounds of {options.turns_per_round} turns, checkpoints of "
        f"{CHECKPOINT_BYTES[0] // 1024}-{CHECKPOINT_BYTES[1] // 1024} KB, retention "
        f"{options.keep_days} rounds, {os.cpu_count()} CPUs",
        flush=True,
    )
    kept = run_configuration("forever", options, retention=False)
    pruned = run_configuration("retention", options, retention=True)

    print()
    print("== results (without retention -> with it, after the last round)")
    last_kept, last_pruned = kept[-1], pruned[-1]
    peak = max(pruned, key=lambda row: row.document_bytes)
    print(
        f"workspace_document: {last_kept.document_bytes / 2**20:.1f} MB -> "
        f"{last_pruned.document_bytes / 2**20:.1f} MB "
        f"(x{last_kept.document_bytes / last_pruned.document_bytes:.1f} smaller; "
        f"largest with retention {peak.document_bytes / 2**20:.1f} MB, round "
        f"{pruned.index(peak) + 1})"
    )
    print(
        f"database:           {last_kept.database_bytes / 2**20:.1f} MB -> "
        f"{last_pruned.database_bytes / 2**20:.1f} MB"
    )
    pruning = [row for row in pruned if row.deleted]
    print(
        f"checkpoints:        {last_kept.checkpoints} -> {last_pruned.checkpoints}; each prune "
        f"deleted {min(row.deleted for row in pruning)}-{max(row.deleted for row in pruning)} "
        f"in {max(row.prune_seconds for row in pruning):.2f} s at most"
    )


if __name__ == "__main__":
    main()
