"""The document metadata keys the workspace itself acts on, checked on write and read strictly.

Any other key is the tenant's own and is stored as sent. These change what happens to documents
(indexed or not, versioned or not, deleted when old), so a value of the wrong JSON type is refused
on write rather than guessed at: ``"skip_indexing": "false"`` is a truthy string. Metadata stored
before this check is read strictly too: only a JSON ``true`` switches a flag on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

FLAGS = ("skip_indexing", "skip_versioning")
HYGIENE = "hygiene"
DEFAULT_RETENTION_DAYS = 30


def metadata_problems(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """What is wrong with the known keys of ``metadata``, by key (empty when nothing is)."""
    problems: dict[str, Any] = {}
    for flag in FLAGS:
        if flag in metadata and not isinstance(metadata[flag], bool):
            problems[flag] = ["Must be a JSON boolean (true or false)."]
    if HYGIENE in metadata:
        hygiene = metadata[HYGIENE]
        if not isinstance(hygiene, dict):
            problems[HYGIENE] = ["Must be an object: {enabled, retention_days}."]
        else:
            nested: dict[str, list[str]] = {}
            if "enabled" in hygiene and not isinstance(hygiene["enabled"], bool):
                nested["enabled"] = ["Must be a JSON boolean (true or false)."]
            if "retention_days" in hygiene and not is_positive_integer(hygiene["retention_days"]):
                nested["retention_days"] = ["Must be a positive integer (days)."]
            if nested:
                problems[HYGIENE] = nested
    return problems


def is_positive_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def flag_is_set(metadata: Mapping[str, Any], flag: str) -> bool:
    return metadata.get(flag) is True


def retention_days(hygiene: Any) -> int | None:
    """Days a folder's documents are kept under ``hygiene``; None when it is not enabled."""
    if not isinstance(hygiene, dict) or hygiene.get("enabled") is not True:
        return None
    days = hygiene.get("retention_days", DEFAULT_RETENTION_DAYS)
    return days if is_positive_integer(days) else DEFAULT_RETENTION_DAYS
