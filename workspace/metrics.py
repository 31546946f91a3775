"""Prometheus series of the workspace: writes by kind and failed embedding calls.

Recorded in memory (see ``core.metrics``): a runtime write stays one SQL statement.
"""

from __future__ import annotations

from prometheus_client import Counter

EMBEDDING_ERRORS = Counter(
    "ironclaw_embedding_errors", "Indexing runs whose embedding call failed."
)
WORKSPACE_WRITES = Counter(
    "ironclaw_workspace_writes",
    "Workspace writes by kind: runtime (one upsert, never indexed) or document.",
    ["kind"],
)
# Bound once: the hot paths skip the label lookup, and both series exist from the start.
RUNTIME_WRITES = WORKSPACE_WRITES.labels(kind="runtime")
DOCUMENT_WRITES = WORKSPACE_WRITES.labels(kind="document")
