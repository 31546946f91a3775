"""Prometheus series of the engine's maintenance: checkpoints deleted by retention.

Recorded in memory (see ``core.metrics``) by the process that ran the prune: the background
worker's hourly job, or ``manage.py prune_checkpoints``.
"""

from __future__ import annotations

from prometheus_client import Counter

CHECKPOINTS_DELETED = Counter(
    "ironclaw_checkpoints_deleted",
    "Engine checkpoints deleted by retention, by kind: thread or conversation.",
    ["kind"],
)
