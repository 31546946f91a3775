"""Prometheus series of routines: firings by state.

Recorded in memory by the worker whose scheduler pass committed the firing (see ``core.metrics``
for how the processes' figures are summed at scrape time): never a database statement.
"""

from __future__ import annotations

from prometheus_client import Counter

ROUTINE_FIRINGS = Counter(
    "ironclaw_routine_firings",
    "Routine firings recorded, by state: fired, rejected (the conversation refused the "
    "message), skipped (one per run of slots missed beyond ROUTINE_CATCH_UP_MINUTES).",
    ["state"],
)


def routine_firing_observe(state: str) -> None:
    """Count one firing; called after its transaction commits."""
    ROUTINE_FIRINGS.labels(state=state).inc()
