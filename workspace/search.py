"""Hybrid search: a full-text leg and a vector leg, fused by reciprocal rank.

Each leg filters by tenant first and takes its own top ``SEARCH_CANDIDATES`` from that tenant's
chunks only, so a tenant never gets fewer results because another tenant has more data. Chunks of
runtime documents cannot exist (a trigger refuses them) and are filtered out anyway.

The vector leg picks its plan per query (``vector_plan_choose``) from one indexed row: a tenant
with more than ``SEARCH_HNSW_MIN_CHUNKS`` chunks of the current model has an HNSW index of its own
(a partial index of its rows, built and measured by ``vector_index_ensure``), which serves it
unless its recall@10, measured at build, is below ``SEARCH_RECALL_FLOOR``. Every other tenant's
chunks are scanned exactly: a fraction of a millisecond for a small tenant, and always its full
top-k. Search statements are never prepared: a generic plan would ignore the tenant, its size and
its index.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection
from pgvector import Vector

from workspace.embeddings import EmbeddingError, embedding_provider
from workspace.errors import InvalidContent
from workspace.hnsw import (
    HNSW_MAX_DIMENSIONS,
    VECTOR_EXACT_SQL,
    execute_unprepared,
    vector_index_scan,
    vector_index_supported,
)
from workspace.paths import is_runtime_path

logger = logging.getLogger(__name__)

MODES = ("hybrid", "fts", "vector")


@dataclass(frozen=True)
class FusedHit:
    chunk_id: int
    score: float
    fts_rank: int | None
    vector_rank: int | None


@dataclass(frozen=True)
class SearchResult:
    path: str
    chunk_id: int
    content: str
    score: float
    fts_rank: int | None
    vector_rank: int | None


@dataclass(frozen=True)
class VectorPlan:
    # "hnsw" (the tenant's own HNSW index) or "exact" (scan of the tenant's chunks).
    kind: str
    reason: str
    # hnsw.ef_search of the index scan: the one calibrated at build, or SEARCH_HNSW_EF_SEARCH if
    # that is larger; 0 for the exact scan.
    ef_search: int = 0


@dataclass(frozen=True)
class SearchResponse:
    results: list[SearchResult]
    degraded: bool
    # The vector leg's plan; None when the vector leg did not run.
    vector_plan: VectorPlan | None = None


def fuse_weighted(
    fts_ids: Sequence[int],
    vector_ids: Sequence[int],
    *,
    fts_weight: float,
    vector_weight: float,
    limit: int,
    min_score: float = 0.0,
) -> list[FusedHit]:
    """Weighted fusion: score = fts_weight / fts_rank + vector_weight / vector_rank, normalised."""
    return _fuse(
        fts_ids,
        vector_ids,
        lambda rank, weight: weight / rank,
        (fts_weight, vector_weight),
        limit=limit,
        min_score=min_score,
    )


def fuse_rrf(
    fts_ids: Sequence[int],
    vector_ids: Sequence[int],
    *,
    k: int,
    limit: int,
    min_score: float = 0.0,
) -> list[FusedHit]:
    """Reciprocal rank fusion: score = sum of 1/(k + rank) over legs, normalised so the best is 1.

    Ranks are 1-based positions in each leg. Ties are broken by the better single-leg rank, then by
    chunk id, so the order is deterministic.
    """
    return _fuse(
        fts_ids,
        vector_ids,
        lambda rank, _weight: 1.0 / (k + rank),
        (1.0, 1.0),
        limit=limit,
        min_score=min_score,
    )


def _fuse(
    fts_ids: Sequence[int],
    vector_ids: Sequence[int],
    contribution: Callable[[int, float], float],
    weights: tuple[float, float],
    *,
    limit: int,
    min_score: float,
) -> list[FusedHit]:
    if limit <= 0:
        return []
    fts_rank = {chunk_id: rank for rank, chunk_id in enumerate(fts_ids, start=1)}
    vector_rank = {chunk_id: rank for rank, chunk_id in enumerate(vector_ids, start=1)}
    raw: dict[int, float] = {}
    for ranks, weight in zip((fts_rank, vector_rank), weights, strict=True):
        for chunk_id, rank in ranks.items():
            raw[chunk_id] = raw.get(chunk_id, 0.0) + contribution(rank, weight)
    best = max(raw.values(), default=0.0)
    if best <= 0:
        return []
    hits = [
        FusedHit(
            chunk_id=chunk_id,
            score=score / best,
            fts_rank=fts_rank.get(chunk_id),
            vector_rank=vector_rank.get(chunk_id),
        )
        for chunk_id, score in raw.items()
        # A leg weighted 0 (SEARCH_FTS_WEIGHT=0, say) counts for nothing: a chunk only it found
        # scores 0 and is no hit, where it used to come last with a score of 0.
        if score > 0
    ]
    if min_score > 0:
        hits = [hit for hit in hits if hit.score >= min_score]
    hits.sort(
        key=lambda hit: (
            -hit.score,
            min(hit.fts_rank or 10**9, hit.vector_rank or 10**9),
            hit.chunk_id,
        )
    )
    return hits[:limit]


_FTS_SQL = """
SELECT c.id
FROM workspace_chunk c
JOIN workspace_document d ON d.id = c.document_id AND d.user_id = c.user_id
WHERE c.user_id = %(user_id)s
  AND c.content_tsv @@ websearch_to_tsquery('english', %(query)s)
  AND NOT d.is_runtime
ORDER BY ts_rank_cd(c.content_tsv, websearch_to_tsquery('english', %(query)s)) DESC, c.id
LIMIT %(candidates)s
"""

# The plan's facts in one round trip, an index lookup in a table of one row per big tenant: the
# tenant's size is never counted at query time (vector_index_ensure records its index there).
_PLAN_FACTS_SQL = """
SELECT t.recall, t.ef_search, EXISTS (
    SELECT 1 FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
    WHERE ic.relname = t.name AND i.indisvalid
      AND ic.relnamespace = current_schema()::regnamespace
  )
FROM workspace_tenantvectorindex t
WHERE t.user_id = %(user_id)s AND t.model = %(model)s AND t.dimensions = %(dimensions)s
"""

_DETAILS_SQL = """
SELECT c.id, d.path, c.content
FROM workspace_chunk c
JOIN workspace_document d ON d.id = c.document_id AND d.user_id = c.user_id
WHERE c.user_id = %(user_id)s AND c.id = ANY(%(ids)s)
"""


def vector_plan_choose(*, user_id: str, model: str, dimensions: int) -> VectorPlan:
    """The vector leg's plan for this tenant, model and size (one statement at most)."""
    if settings.SEARCH_VECTOR_INDEX == "off":
        return VectorPlan("exact", "SEARCH_VECTOR_INDEX=off")
    if dimensions > HNSW_MAX_DIMENSIONS:
        return VectorPlan("exact", f"{dimensions} dimensions is more than HNSW indexes")
    if not vector_index_supported():
        return VectorPlan("exact", "pgvector has no iterative index scans (0.8+)")
    with connection.cursor() as cursor:
        execute_unprepared(
            cursor,
            _PLAN_FACTS_SQL,
            {"user_id": user_id, "model": model, "dimensions": dimensions},
        )
        row = cursor.fetchone()
    if row is None:
        return VectorPlan(
            "exact", "tenant has no HNSW index of the model (at most SEARCH_HNSW_MIN_CHUNKS chunks)"
        )
    recall, ef_search, index_valid = row
    if not index_valid:
        return VectorPlan("exact", "the tenant's HNSW index is not valid (vector_index_ensure)")
    floor = settings.SEARCH_RECALL_FLOOR
    if recall < floor:
        return VectorPlan(
            "exact", f"the tenant's HNSW index recall@10 {recall:.2f} is below {floor:.2f}"
        )
    return VectorPlan(
        "hnsw",
        f"the tenant's HNSW index, recall@10 {recall:.2f}",
        ef_search=max(ef_search, settings.SEARCH_HNSW_EF_SEARCH),
    )


def vector_leg(
    *, user_id: str, model: str, query_vector: list[float], candidates: int
) -> tuple[list[int], VectorPlan]:
    """The tenant's ``candidates`` nearest chunk ids of ``model``, and the plan that found them."""
    dimensions = len(query_vector)
    plan = vector_plan_choose(user_id=user_id, model=model, dimensions=dimensions)
    params: dict[str, Any] = {
        "user_id": user_id,
        "model": model,
        "dimensions": dimensions,
        "vector": Vector(query_vector).to_text(),
        "candidates": candidates,
    }
    if plan.kind == "hnsw":
        return vector_index_scan(params, ef_search=plan.ef_search), plan
    with connection.cursor() as cursor:
        execute_unprepared(cursor, VECTOR_EXACT_SQL, params)
        return [row[0] for row in cursor.fetchall()], plan


def workspace_search(
    *,
    user_id: str,
    query: str,
    limit: int = 10,
    mode: str = "hybrid",
    min_score: float = 0.0,
) -> SearchResponse:
    """Search a tenant's indexed chunks. Never fails because of the embedding provider: if the
    query cannot be embedded, the full-text leg answers alone and ``degraded`` is true.
    """
    if "\x00" in query:
        raise InvalidContent("query must not contain NUL characters.", details={"query": ["NUL"]})
    if mode not in MODES:
        raise InvalidContent(f"mode must be one of {', '.join(MODES)}.", details={"mode": [mode]})
    candidates = settings.SEARCH_CANDIDATES
    degraded = False
    query_vector: list[float] | None = None
    provider = embedding_provider()
    if mode in ("hybrid", "vector") and provider.name:
        # Embedded before touching the database: a slow provider never holds a connection's
        # transaction open (there is none here) nor blocks a lock.
        try:
            query_vector = provider.embed([query])[0]
        except EmbeddingError as error:
            logger.warning("query embedding failed, answering with full-text only: %s", error)
            degraded = True
    elif mode == "vector":
        degraded = True

    fts_ids: list[int] = []
    vector_ids: list[int] = []
    plan: VectorPlan | None = None
    if query_vector is not None:
        vector_ids, plan = vector_leg(
            user_id=user_id,
            model=provider.name,
            query_vector=query_vector,
            candidates=candidates,
        )
    with connection.cursor() as cursor:
        if mode in ("hybrid", "fts") or degraded:
            execute_unprepared(
                cursor, _FTS_SQL, {"user_id": user_id, "query": query, "candidates": candidates}
            )
            fts_ids = [row[0] for row in cursor.fetchall()]
        if settings.SEARCH_FUSION == "weighted":
            hits = fuse_weighted(
                fts_ids,
                vector_ids,
                fts_weight=settings.SEARCH_FTS_WEIGHT,
                vector_weight=settings.SEARCH_VECTOR_WEIGHT,
                limit=limit,
                min_score=min_score,
            )
        else:
            hits = fuse_rrf(
                fts_ids, vector_ids, k=settings.SEARCH_RRF_K, limit=limit, min_score=min_score
            )
        details: dict[int, tuple[str, str]] = {}
        if hits:
            execute_unprepared(
                cursor, _DETAILS_SQL, {"user_id": user_id, "ids": [hit.chunk_id for hit in hits]}
            )
            details = {row[0]: (row[1], row[2]) for row in cursor.fetchall()}
    results = [
        SearchResult(
            path=details[hit.chunk_id][0],
            chunk_id=hit.chunk_id,
            content=details[hit.chunk_id][1],
            score=hit.score,
            fts_rank=hit.fts_rank,
            vector_rank=hit.vector_rank,
        )
        for hit in hits
        # A chunk replaced between the queries is dropped; so is one whose path became runtime
        # under a changed WORKSPACE_RUNTIME_PATHS before cleanup_runtime_chunks ran.
        if hit.chunk_id in details and not is_runtime_path(details[hit.chunk_id][0])
    ]
    return SearchResponse(results=results, degraded=degraded, vector_plan=plan)
