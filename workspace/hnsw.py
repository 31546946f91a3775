"""The HNSW index of chunk embeddings: one partial expression index per embedding model and size.

The ``embedding`` column has no fixed dimension (the provider can change without a migration), so
an index is built over ``embedding::vector(D)`` for the rows of one model only. Which model and
size is configuration, so ``manage.py vector_index_ensure`` builds it, not a migration.

Filtered approximate search returns a tenant's full top-k only with pgvector 0.8's iterative index
scans; with an older pgvector the vector leg always scans exactly (``vector_index_supported``).
"""

from __future__ import annotations

import hashlib
import logging
import re

from django.db import connection

logger = logging.getLogger(__name__)

ITERATIVE_SCAN_MIN_VERSION = (0, 8)
# pgvector's HNSW limit for the vector type.
HNSW_MAX_DIMENSIONS = 2000

_pgvector_version: tuple[int, ...] | None = None
_old_pgvector_logged = False


def vector_index_name(*, model: str, dimensions: int) -> str:
    """Deterministic from model and size, readable, and within PostgreSQL's 63-byte identifiers."""
    slug = re.sub(r"[^a-z0-9]+", "_", model.lower()).strip("_")[:24]
    digest = hashlib.sha256(f"{model}\x00{dimensions}".encode()).hexdigest()[:8]
    return f"workspace_chunk_hnsw_{slug}_{dimensions}_{digest}"


def pgvector_version() -> tuple[int, ...]:
    """The server's pgvector version, read once per process (an upgrade needs a restart anyway)."""
    global _pgvector_version
    if _pgvector_version is None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            row = cursor.fetchone()
        _pgvector_version = _version_tuple(row[0]) if row else ()
    return _pgvector_version


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def vector_index_supported() -> bool:
    """True when pgvector has iterative index scans; says once per process when it has not."""
    global _old_pgvector_logged
    version = pgvector_version()
    if version >= ITERATIVE_SCAN_MIN_VERSION:
        return True
    if not _old_pgvector_logged:
        _old_pgvector_logged = True
        logger.warning(
            "pgvector %s has no iterative index scans (0.8+): vector search scans each tenant's "
            "chunks exactly, which slows down for big tenants",
            ".".join(map(str, version)) or "(not installed)",
        )
    return False


def vector_index_cache_clear() -> None:
    """Forget the detected version (tests; a process that reconnects to another server)."""
    global _pgvector_version, _old_pgvector_logged
    _pgvector_version = None
    _old_pgvector_logged = False
