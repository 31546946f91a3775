"""The HNSW indexes of chunk embeddings: a partial expression index per big tenant, model, size.

The ``embedding`` column has no fixed dimension (the provider can change without a migration), so
an index is built over ``embedding::vector(D)`` for the rows of one tenant and one model only.
Which tenants are big, and which model and size is current, is data and configuration, so
``manage.py vector_index_ensure`` (and its periodic job) builds them, not a migration. A tenant's
own index never makes its scan wade through other tenants' points, which a model-wide index with
a tenant filter did (it was dropped: see ``model_vector_index_name``).

Filtered approximate search returns a tenant's full top-k only with pgvector 0.8's iterative index
scans; with an older pgvector the vector leg always scans exactly (``vector_index_supported``).
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import Any

from django.db import connection, transaction
from django.db.backends.utils import CursorWrapper

logger = logging.getLogger(__name__)

ITERATIVE_SCAN_MIN_VERSION = (0, 8)
# pgvector's HNSW limit for the vector type.
HNSW_MAX_DIMENSIONS = 2000

# Only vectors of the current model (and size) are comparable; an exact scan of the tenant's rows.
VECTOR_EXACT_SQL = """
SELECT c.id
FROM workspace_chunk c
JOIN workspace_document d ON d.id = c.document_id AND d.user_id = c.user_id
WHERE c.user_id = %(user_id)s
  AND c.embedding IS NOT NULL
  AND c.embedding_model = %(model)s
  AND vector_dims(c.embedding) = %(dimensions)s
  AND NOT d.is_runtime
ORDER BY c.embedding <=> %(vector)s::vector, c.id
LIMIT %(candidates)s
"""

# The expression and predicate of the tenant's partial index, so the planner uses it; {dimensions}
# is an int (a type modifier cannot be a parameter). relaxed_order may return candidates slightly
# out of order: the outer query re-sorts them by exact distance.
VECTOR_HNSW_SQL = """
WITH nearest AS MATERIALIZED (
  SELECT c.id, c.document_id,
         c.embedding::vector({dimensions}) <=> %(vector)s::vector({dimensions}) AS distance
  FROM workspace_chunk c
  WHERE c.user_id = %(user_id)s
    AND c.embedding_model = %(model)s
    AND vector_dims(c.embedding) = {dimensions}
    AND c.embedding IS NOT NULL
  ORDER BY c.embedding::vector({dimensions}) <=> %(vector)s::vector({dimensions})
  LIMIT %(candidates)s
)
SELECT n.id
FROM nearest n
JOIN workspace_document d ON d.id = n.document_id
WHERE d.user_id = %(user_id)s AND NOT d.is_runtime
ORDER BY n.distance, n.id
"""

_pgvector_version: tuple[int, ...] | None = None
_old_pgvector_logged = False


def vector_index_name(*, user_id: str, model: str, dimensions: int) -> str:
    """A tenant's index of a model and size: deterministic, readable, within 63-byte identifiers."""
    slug = re.sub(r"[^a-z0-9]+", "_", f"{user_id}_{model}".lower()).strip("_")[:20]
    digest = hashlib.sha256(f"{user_id}\x00{model}\x00{dimensions}".encode()).hexdigest()[:12]
    return f"workspace_chunk_hnsw_{slug}_{dimensions}_{digest}"


def model_vector_index_name(*, model: str, dimensions: int) -> str:
    """The model-wide index earlier releases built; ``vector_index_ensure`` drops it."""
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


def execute_unprepared(cursor: CursorWrapper, sql: str, params: dict[str, Any]) -> None:
    """Execute without ever preparing, whatever the connection's prepare_threshold.

    A prepared statement may get a generic plan, made once for any tenant: it ran a big tenant's
    query as a slow scan again, and could never prove a tenant's partial index applies. Django's
    default client-side binding never prepares; this keeps that true with ``server_side_binding``
    and a ``prepare_threshold`` in the database OPTIONS. It goes through Django's execute
    wrappers, so query logging and counting still see it.
    """

    def unprepared(execute: object, sql: str, params: object, many: bool, context: dict) -> None:
        with connection.wrap_database_errors:
            context["cursor"].cursor.execute(sql, params, prepare=False)

    with connection.execute_wrapper(unprepared):
        cursor.execute(sql, params)


def vector_index_scan(params: dict[str, Any], *, ef_search: int) -> list[int]:
    """The tenant's nearest chunk ids through its own index (``VECTOR_HNSW_SQL``'s parameters)."""
    # SET LOCAL: the scan settings end with this transaction, never leak into a pooled
    # connection's next request. The iterative scan only matters when SEARCH_CANDIDATES is more
    # than ef_search: the tenant's index holds no other tenant's rows to filter out.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        cursor.execute(f"SET LOCAL hnsw.ef_search = {int(ef_search)}")
        execute_unprepared(
            cursor, VECTOR_HNSW_SQL.format(dimensions=int(params["dimensions"])), params
        )
        return [row[0] for row in cursor.fetchall()]
