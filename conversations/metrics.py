"""Prometheus series of turns: how runs end and where their time goes.

Recorded in memory by whichever process records an outcome (see ``core.metrics`` for how the
processes' figures are summed at scrape time): never a database statement.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram

if TYPE_CHECKING:
    from conversations.models import Thread

TURNS = Counter("ironclaw_turns", "Thread runs ended, by outcome kind.", ["outcome"])
_TURN_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
TURN_DURATION = Histogram(
    "ironclaw_turn_duration_seconds",
    "A thread's end to end time, from enqueued to finished.",
    buckets=_TURN_BUCKETS,
)
TURN_MODEL_TIME = Histogram(
    "ironclaw_turn_model_seconds",
    "Time a thread spent waiting for the model.",
    buckets=_TURN_BUCKETS,
)
TURN_OVERHEAD = Histogram(
    "ironclaw_turn_overhead_seconds",
    "A thread's end to end time minus its model time: queueing, claims, checkpoints, writes.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)


def turn_observe(thread: Thread) -> None:
    """Count a run's outcome and, when the thread finished, its end to end, model and overhead
    times. Called after the outcome's transaction commits, in whichever process recorded it."""
    TURNS.labels(outcome=str((thread.outcome or {}).get("kind", "unknown"))).inc()
    if thread.finished_at is None or thread.enqueued_at is None:
        return
    # enqueued_at comes from the database clock, finished_at from this process's: never below 0.
    end_to_end = max(0.0, (thread.finished_at - thread.enqueued_at).total_seconds())
    model = thread.model_time_ms / 1000
    TURN_DURATION.observe(end_to_end)
    TURN_MODEL_TIME.observe(model)
    TURN_OVERHEAD.observe(max(0.0, end_to_end - model))
