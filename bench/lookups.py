"""Lookups benchmark: the reads every API request makes, as the ORM builds them and as fixed SQL.

The authentication lookup runs on every request, the entries long-poll checks the conversation
and whether an entry arrived on every request and every wake-up, and every message locks its
conversation through the channel index (in a transaction, as the service does). Both ways are
timed in the same run on the same connection, as CPU time of this process (what a web process
spends; PostgreSQL's side is the same statement either way):

    .venv/bin/python bench/lookups.py [--iterations 3000]

Runs against its own database (created, migrated, dropped), never the dev database.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Run as a script, this folder comes first on the path: the checkout must come before it, or
# bench/conversations.py would stand in for the conversations app.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scratch_database import scratch_database


def cpu_microseconds(call: Callable[[], object], iterations: int) -> float:
    for _ in range(min(iterations, 200)):  # warm: connection, caches
        call()
    started = time.process_time()
    for _ in range(iterations):
        call()
    return (time.process_time() - started) / iterations * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3000)
    iterations = parser.parse_args().iterations
    with scratch_database("ironclaw_bench_lookups") as name:
        from django.db import transaction
        from django.db.models import Subquery

        from accounts.authentication import _ACTIVE_KEY
        from accounts.models import ApiKey
        from accounts.services import api_key_create, hash_api_key
        from conversations import selectors
        from conversations.models import ChannelUserIndex, Conversation, ConversationEntry
        from conversations.services import message_handle
        from conversations.services.locking import conversation_lock_by_channel, lock_bound

        def in_transaction(read: Callable[[], object]) -> Callable[[], object]:
            def call() -> object:
                with transaction.atomic():
                    return read()

            return call

        def channel_lock_by_orm() -> object:
            current = ChannelUserIndex.objects.filter(user_id="alice", channel="web")
            return (
                Conversation.objects.for_update()
                .filter(lock_bound(), pk=Subquery(current.values("conversation_id")[:1]))
                .first()
            )

        key_hash = hash_api_key(api_key_create(name="bench", user_id="alice").raw_key)
        sent = message_handle(user_id="alice", channel="web", content="hello")
        conversation_id = sent.conversation_id

        cases: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
            (
                "API key by hash (every request)",
                lambda: ApiKey.objects.filter(key_hash=key_hash, revoked_at__isnull=True).first(),
                lambda: _ACTIVE_KEY.first([key_hash]),
            ),
            (
                "conversation of the tenant exists",
                lambda: Conversation.objects.filter(pk=conversation_id, user_id="alice").exists(),
                lambda: selectors.fixed_exists(
                    selectors._CONVERSATION_OF_TENANT, [conversation_id, "alice"]
                ),
            ),
            (
                "an entry after seq exists (each wake)",
                lambda: ConversationEntry.objects.filter(
                    conversation_id=conversation_id, user_id="alice", seq__gt=sent.seq
                ).exists(),
                lambda: selectors.entry_after_exists(
                    user_id="alice", conversation_id=conversation_id, after_seq=sent.seq
                ),
            ),
        ]
        cases.append(
            (
                "conversation lock by channel (messages)",
                in_transaction(channel_lock_by_orm),
                in_transaction(lambda: conversation_lock_by_channel("alice", "web")),
            )
        )
        print(f"lookups on {name}: CPU of this process per call, {iterations} calls each")
        print(f"  {'lookup':<40}{'ORM us':>9}{'fixed us':>10}{'ORM/fixed':>11}")
        for label, orm, fixed in cases:
            assert bool(orm()) == bool(fixed()), label  # the same answer both ways
            orm_us = cpu_microseconds(orm, iterations)
            fixed_us = cpu_microseconds(fixed, iterations)
            print(f"  {label:<40}{orm_us:9.0f}{fixed_us:10.0f}{orm_us / fixed_us:10.1f}x")


if __name__ == "__main__":
    main()
