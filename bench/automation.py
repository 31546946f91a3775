"""Routines and webhooks benchmark: what webhook events cost a turn, and what the scheduler costs a
routine's message, each against a baseline measured in the same run.

1. **A turn's end with webhook triggers.** A turn's database work as the services do it (the
   message spawns a thread, a worker claims it, the outcome completes it and writes the agent's
   entry), in blocks of ``--turns`` turns, three configurations taking turns block by block:
   the webhook triggers disabled (the baseline: the service as it was before webhooks), enabled
   for a tenant with no webhook (what every tenant pays), and enabled for a tenant whose webhook
   wants ``thread.completed`` and ``entry.created`` (two deliveries and two jobs per turn).
2. **A scheduler pass.** ``--routines`` routines of as many tenants, all due at one slot, fired by
   ``routines_fire_due`` until none is due; the baseline posts the same messages through
   ``message_handle`` directly, as a tenant's own scheduler calling the API's service would.

Each part runs on a scratch database of its own. Figures are per turn (or message) in ms of wall
time on this process's thread, medians over the blocks.

    .venv/bin/python bench/automation.py [--turns 200] [--rounds 5] [--routines 500]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from scratch_database import scratch_database

TRIGGERS = (
    ("conversations_thread", "webhooks_thread_ended"),
    ("conversations_conversationentry", "webhooks_agent_entry"),
)


def _triggers(enabled: bool) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        for table, trigger in TRIGGERS:
            action = "ENABLE" if enabled else "DISABLE"
            cursor.execute(f"ALTER TABLE {table} {action} TRIGGER {trigger}")


def _turn(user_id: str, channel: str) -> None:
    from conversations.services import (
        ThreadOutcome,
        message_handle,
        thread_claim,
        thread_outcome_record,
    )

    sent = message_handle(user_id=user_id, channel=channel, content="summarise the day")
    thread = thread_claim(user_id=user_id, thread_id=sent.thread_id, worker_id="bench")
    thread_outcome_record(
        user_id=user_id,
        thread_id=thread.id,
        outcome=ThreadOutcome(kind="completed", response="the day, summarised"),
        worker_id="bench",
        lease_epoch=thread.claim_count,
    )


def _block(turns: int, user_id: str, counter: list[int]) -> float:
    """Median ms per turn of ``turns`` turns, each in a new channel (a spawn every time)."""
    timings = []
    for _ in range(turns):
        counter[0] += 1
        started = time.perf_counter()
        _turn(user_id, f"c{counter[0]}")
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def turn_costs(turns: int, rounds: int) -> dict[str, float]:
    from django.db import connection

    from webhooks.models import Webhook

    Webhook.objects.create(
        user_id="hooked",
        url="http://127.0.0.1:9/hook",
        events=["thread.completed", "entry.created"],
        secret="whsec_YmVuY2g=",
    )
    configurations: dict[str, Callable[[], float]] = {
        "triggers off (baseline)": lambda: _block(turns, "quiet", counter),
        "triggers on, no webhook": lambda: _block(turns, "quiet", counter),
        "triggers on, one webhook": lambda: _block(turns, "hooked", counter),
    }
    counter = [0]
    _block(turns // 4 or 1, "quiet", counter)  # warm-up: connections, plans, caches
    medians: dict[str, list[float]] = {name: [] for name in configurations}
    for _ in range(rounds):
        for name, run in configurations.items():
            _triggers(enabled="off" not in name)
            medians[name].append(run())
    _triggers(enabled=True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM webhooks_webhookdelivery")
        deliveries = cursor.fetchone()[0]
    print(f"  ({deliveries} deliveries created for the hooked tenant)")
    return {name: statistics.median(values) for name, values in medians.items()}


def scheduler_costs(routines: int) -> tuple[float, float]:
    from conversations.services import message_handle
    from routines.models import Routine, RoutineFiring
    from routines.services import routine_create, routines_fire_due

    slot = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
    for index in range(routines):
        routine_create(
            user_id=f"tenant-{index}",
            name="digest",
            cron="0 9 * * *",
            timezone="UTC",
            channel="web",
            message="summarise the day",
        )
    # All due at one slot, whatever today's date: the scheduler is given that slot's time.
    Routine.objects.update(next_fire_at=slot)
    started = time.perf_counter()
    while routines_fire_due(now=slot + timedelta(seconds=1)).routines:
        pass
    scheduled = (time.perf_counter() - started) * 1000 / routines
    assert RoutineFiring.objects.count() == routines

    started = time.perf_counter()
    for index in range(routines):
        message_handle(user_id=f"direct-{index}", channel="web", content="summarise the day")
    direct = (time.perf_counter() - started) * 1000 / routines
    return scheduled, direct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=200, help="turns per block")
    parser.add_argument("--rounds", type=int, default=5, help="blocks per configuration")
    parser.add_argument("--routines", type=int, default=500, help="routines due at one slot")
    options = parser.parse_args()

    with scratch_database("ironclaw_bench_automation_turns"):
        costs = turn_costs(options.turns, options.rounds)
    baseline = costs["triggers off (baseline)"]
    print(f"A turn's database work, median ms per turn ({options.rounds} blocks of "
          f"{options.turns}):")  # fmt: skip
    for name, value in costs.items():
        print(f"  {name:28} {value:6.2f} ms   x{value / baseline:.2f}")

    with scratch_database("ironclaw_bench_automation_scheduler"):
        scheduled, direct = scheduler_costs(options.routines)
    print(f"{options.routines} routines due at one slot, ms per message:")
    print(f"  message_handle directly (baseline) {direct:6.2f} ms")
    print(f"  fired by the scheduler             {scheduled:6.2f} ms   x{scheduled / direct:.2f}")


if __name__ == "__main__":
    main()
