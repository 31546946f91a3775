"""The chaos driver's measure of a turn worker's kill: how long the turns it was running took to
be answered (they resume from their checkpoints on the worker that replaces it)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any


@dataclass
class TurnsKill:
    """The turns a killed turn worker was running; ``fault`` gets their figures."""

    fault: dict[str, Any]
    killed_at: Any  # an aware datetime
    threads: list[Any]


def interrupted_turns(pid: int) -> tuple[Any, list[Any]] | None:
    """The time now, and the threads whose leases the turn worker ``pid`` held (read at once:
    its replacement gives them back within a second or two); None if they could not be read."""
    from django.db import DatabaseError, connection
    from django.utils import timezone

    from conversations.models import Thread

    # The clock the entries' created_at come from: this host's.
    now = timezone.now()
    # Its lease owners: turn-worker:<worker row>:<host>:<pid>:<turn> (lease_owner_id).
    threads = Thread.objects.filter(
        state="running", lease_owner__regex=rf"^turn-worker:[0-9]+:[^:]+:{pid}:"
    ).values_list("pk", flat=True)
    for _attempt in range(3):
        try:
            return now, list(threads)
        except DatabaseError:
            # A connection an earlier database fault broke: the next one is fresh.
            connection.close()
    return None


def interrupted_replies(kills: list[TurnsKill]) -> list[str]:
    """Add to each kill's fault the seconds from the kill to the replies of the turns it
    interrupted (the agent's entry, or the thread's end if it ended without one): p50, p95 and
    max. Returns the problems found: a turn that never ended."""
    from conversations.models import ConversationEntry, Thread

    problems = []
    for kill in kills:
        seconds = []
        for thread_id in kill.threads:
            entry = (
                ConversationEntry.objects.filter(thread_id=thread_id, sender="agent")
                .values_list("created_at", flat=True)
                .first()
            )
            ended = entry or Thread.objects.get(pk=thread_id).finished_at
            if ended is None:
                problems.append(f"interrupted turn of thread {thread_id} never ended")
                continue
            seconds.append((ended - kill.killed_at).total_seconds())
        kill.fault["interrupted_turns"] = len(kill.threads)
        kill.fault.update(_percentiles("interrupted_reply", seconds))
        if seconds:
            print(
                f"  turn worker pid {kill.fault['pid']}: {len(seconds)} turns interrupted, "
                f"answered after p50 {kill.fault['interrupted_reply_p50_s']} s, "
                f"p95 {kill.fault['interrupted_reply_p95_s']} s, "
                f"max {kill.fault['interrupted_reply_max_s']} s",
                flush=True,
            )
    return problems


def _percentiles(name: str, values: list[float]) -> dict[str, float | None]:
    if not values:
        return {f"{name}_p50_s": None, f"{name}_p95_s": None, f"{name}_max_s": None}
    ordered = sorted(values)
    # The nearest-rank percentile: a value that was measured, even with a handful of turns.
    p95 = ordered[max(0, -(-95 * len(ordered) // 100) - 1)]
    return {
        f"{name}_p50_s": round(statistics.median(ordered), 2),
        f"{name}_p95_s": round(p95, 2),
        f"{name}_max_s": round(ordered[-1], 2),
    }
