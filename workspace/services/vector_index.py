"""Build the HNSW indexes the vector leg uses for big tenants (see ``workspace.hnsw``).

Every tenant with more than ``SEARCH_HNSW_MIN_CHUNKS`` chunks of the model gets a partial index of
its own rows, built concurrently, and a ``TenantVectorIndex`` row with the recall@10 measured on
sample queries against the exact scan, and both plans' median times. The ef_search is calibrated
at the same time: doubled from ``SEARCH_HNSW_EF_SEARCH`` until the recall reaches
``SEARCH_RECALL_FLOOR`` (at most 1000). An index whose recall stays below the floor is kept and
recorded, and search scans that tenant exactly.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.db import DataError, connection
from psycopg import sql

from workspace.hnsw import (
    HNSW_MAX_DIMENSIONS,
    VECTOR_EXACT_SQL,
    execute_unprepared,
    model_vector_index_name,
    vector_index_name,
    vector_index_scan,
)
from workspace.models import TenantVectorIndex

# Sample queries per recall measurement: 50 x 10 neighbours, a standard error of about 0.01.
RECALL_QUERIES = 50
EF_SEARCH_MAX = 1000


@dataclass(frozen=True)
class RecallMeasured:
    # Mean recall@10 over the sample queries, less one standard error: the floor is compared
    # with what the index surely reaches, not with a lucky sample's figure.
    recall: float
    ef_search: int
    # Median milliseconds per query, at that ef_search and for the exact scan.
    index_ms: float
    exact_ms: float


@dataclass(frozen=True)
class TenantIndexBuilt:
    user_id: str
    name: str
    chunks: int
    # "created", "rebuilt" (an invalid or missing one was replaced), "measured" (the tenant
    # doubled since its build: recall measured again), or with dry_run "would create".
    action: str
    measured: RecallMeasured | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class VectorIndexEnsured:
    model: str
    dimensions: int
    built: list[TenantIndexBuilt] = field(default_factory=list)
    # Tenants whose valid index was left alone.
    present: list[str] = field(default_factory=list)
    # Indexes dropped: tenants now under half the threshold, other models or sizes, and the
    # model-wide index of earlier releases (with dry_run: those it would drop).
    dropped: list[str] = field(default_factory=list)


class VectorIndexUnavailable(Exception):
    pass


def stored_dimensions(*, model: str) -> int | None:
    """The size of one stored vector of ``model`` (a provider that does not say its size)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT vector_dims(embedding) FROM workspace_chunk "
            "WHERE embedding_model = %s AND embedding IS NOT NULL LIMIT 1",
            [model],
        )
        row = cursor.fetchone()
    return int(row[0]) if row else None


def vector_index_state(*, name: str) -> str:
    """'valid', 'invalid' (an interrupted CREATE INDEX CONCURRENTLY) or 'missing'."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT i.indisvalid
            FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
            WHERE c.relname = %s AND c.relnamespace = current_schema()::regnamespace
            """,
            [name],
        )
        row = cursor.fetchone()
    if row is None:
        return "missing"
    return "valid" if row[0] else "invalid"


def tenant_chunk_counts(*, model: str, dimensions: int, over: int) -> dict[str, int]:
    """Tenants with more than ``over`` chunks of the model and size, and their counts."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT user_id, count(*) FROM workspace_chunk
            WHERE embedding_model = %s AND embedding IS NOT NULL AND vector_dims(embedding) = %s
            GROUP BY user_id HAVING count(*) > %s
            """,
            [model, dimensions, over],
        )
        return {row[0]: int(row[1]) for row in cursor.fetchall()}


def vector_index_ensure(
    *, model: str, dimensions: int, dry_run: bool = False
) -> VectorIndexEnsured:
    """Give every big tenant of ``model`` at ``dimensions`` a valid index of its own, measured.

    ``CREATE INDEX CONCURRENTLY``: writes go on during a build, so it must run outside any
    transaction. Idempotent: a valid index is left alone (measured again once its tenant has
    doubled). A tenant's index is dropped once it falls to half the threshold, not at the
    threshold, so a tenant hovering at the line is not rebuilt again and again.
    """
    if not model:
        raise VectorIndexUnavailable("no embedding model is configured (EMBEDDING_PROVIDER=none).")
    if not 1 <= dimensions <= HNSW_MAX_DIMENSIONS:
        raise VectorIndexUnavailable(
            f"HNSW indexes vectors of at most {HNSW_MAX_DIMENSIONS} dimensions, not {dimensions}: "
            "search keeps scanning exactly."
        )
    if connection.in_atomic_block:
        raise VectorIndexUnavailable("CREATE INDEX CONCURRENTLY cannot run inside a transaction.")
    threshold = settings.SEARCH_HNSW_MIN_CHUNKS
    counts = tenant_chunk_counts(model=model, dimensions=dimensions, over=threshold // 2)
    recorded = {
        (row.user_id, row.model, row.dimensions): row for row in TenantVectorIndex.objects.all()
    }
    result = VectorIndexEnsured(model, dimensions)
    for (user_id, row_model, row_dimensions), row in recorded.items():
        if (row_model, row_dimensions) != (model, dimensions) or user_id not in counts:
            result.dropped.append(row.name)
            if not dry_run:
                _drop(row.name)
                # Its key (user_id, model, dimensions) names the tenant.
                row.delete()
    legacy = model_vector_index_name(model=model, dimensions=dimensions)
    if vector_index_state(name=legacy) != "missing":
        result.dropped.append(legacy)
        if not dry_run:
            _drop(legacy)
    for user_id, chunks in sorted(counts.items()):
        name = vector_index_name(user_id=user_id, model=model, dimensions=dimensions)
        known = recorded.get((user_id, model, dimensions))
        state = vector_index_state(name=name)
        if known is not None and state == "valid":
            if chunks <= 2 * known.chunks:
                result.present.append(user_id)
                continue
            action = "measured"
        elif known is None and chunks <= threshold:
            continue
        else:
            action = "rebuilt" if known is not None or state != "missing" else "created"
        if dry_run:
            would = {"created": "would create", "rebuilt": "would rebuild"}.get(
                action, "would measure"
            )
            result.built.append(TenantIndexBuilt(user_id, name, chunks, would))
            continue
        started = time.perf_counter()
        if action != "measured":
            _build(name=name, user_id=user_id, model=model, dimensions=dimensions, drop_first=True)
        measured = recall_measure(user_id=user_id, model=model, dimensions=dimensions)
        _record(
            user_id=user_id,
            model=model,
            dimensions=dimensions,
            name=name,
            chunks=chunks,
            measured=measured,
        )
        seconds = time.perf_counter() - started
        result.built.append(TenantIndexBuilt(user_id, name, chunks, action, measured, seconds))
    return result


def recall_measure(*, user_id: str, model: str, dimensions: int) -> RecallMeasured:
    """The tenant's index against the exact scan: recall@10 and speed, and the ef_search for them.

    The queries are the tenant's own stored vectors moved by a little noise (about 0.23 in norm),
    as a real query lands near the data without being one of its points. ef_search doubles from
    ``SEARCH_HNSW_EF_SEARCH`` until the recall reaches ``SEARCH_RECALL_FLOOR`` or ef_search 1000.
    The times are reported, not acted on: a build's timing is too noisy to choose a plan by.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT l2_normalize(c.embedding::vector(%(dimensions)s) + (
                SELECT array_agg((random() - 0.5) * 0.8 / sqrt(%(dimensions)s))
                FROM generate_series(1, %(dimensions)s + 0 * c.id))::vector)::text
            FROM workspace_chunk c
            WHERE c.user_id = %(user_id)s AND c.embedding_model = %(model)s
              AND vector_dims(c.embedding) = %(dimensions)s
            ORDER BY random() LIMIT %(queries)s
            """,
            {
                "user_id": user_id,
                "model": model,
                "dimensions": dimensions,
                "queries": RECALL_QUERIES,
            },
        )
        vectors = [row[0] for row in cursor.fetchall()]
    params = [
        {"user_id": user_id, "model": model, "dimensions": dimensions, "vector": vector}
        for vector in vectors
    ]
    exact: list[set[int]] = []
    exact_times: list[float] = []
    for query in params:
        started = time.perf_counter()
        with connection.cursor() as cursor:
            execute_unprepared(cursor, VECTOR_EXACT_SQL, {**query, "candidates": 10})
            exact.append({row[0] for row in cursor.fetchall()})
        exact_times.append(time.perf_counter() - started)
    exact_ms = statistics.median(exact_times) * 1000 if exact_times else 0.0
    ef_search = settings.SEARCH_HNSW_EF_SEARCH
    while True:
        recalls: list[float] = []
        times: list[float] = []
        for query, ids in zip(params, exact, strict=True):
            started = time.perf_counter()
            # As search does: SEARCH_CANDIDATES from the index, re-sorted, of which the top 10.
            found = vector_index_scan(
                {**query, "candidates": settings.SEARCH_CANDIDATES}, ef_search=ef_search
            )[:10]
            times.append(time.perf_counter() - started)
            if ids:
                recalls.append(len(set(found) & ids) / len(ids))
        recall = statistics.fmean(recalls) if recalls else 1.0
        if len(recalls) > 1:
            recall -= statistics.stdev(recalls) / len(recalls) ** 0.5
        index_ms = statistics.median(times) * 1000 if times else 0.0
        if recall >= settings.SEARCH_RECALL_FLOOR or ef_search >= EF_SEARCH_MAX:
            return RecallMeasured(recall, ef_search, index_ms, exact_ms)
        ef_search = min(EF_SEARCH_MAX, ef_search * 2)


def _record(
    *, user_id: str, model: str, dimensions: int, name: str, chunks: int, measured: RecallMeasured
) -> None:
    """One upsert keyed by tenant, model and size (a statement that names its tenant)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO workspace_tenantvectorindex (user_id, model, dimensions, name, chunks,
              recall, ef_search, index_ms, exact_ms, built_at)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, now())
            ON CONFLICT (user_id, model, dimensions) DO UPDATE SET name = EXCLUDED.name,
              chunks = EXCLUDED.chunks, recall = EXCLUDED.recall, ef_search = EXCLUDED.ef_search,
              index_ms = EXCLUDED.index_ms, exact_ms = EXCLUDED.exact_ms, built_at = now()
            """,
            [
                user_id,
                model,
                dimensions,
                name,
                chunks,
                measured.recall,
                measured.ef_search,
                measured.index_ms,
                measured.exact_ms,
            ],
        )


def _drop(name: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}")
            .format(sql.Identifier(name))
            .as_string(cursor.connection)
        )


def _build(*, name: str, user_id: str, model: str, dimensions: int, drop_first: bool) -> None:
    if drop_first:
        _drop(name)
    # The predicate's literals must match the query's values for the planner to use the partial
    # index; the cast's size is a type modifier, so it cannot be a parameter either. The size is
    # in the predicate too: a chunk of the same model name but another size (an openai provider
    # whose EMBEDDING_DIMENSIONS changed) is left out instead of failing the cast, which would
    # refuse its insert.
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                sql.SQL(
                    "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON workspace_chunk "
                    "USING hnsw ((embedding::vector({dimensions})) vector_cosine_ops) "
                    "WHERE user_id = {user_id} AND embedding_model = {model} "
                    "AND vector_dims(embedding) = {dimensions}"
                )
                .format(
                    name=sql.Identifier(name),
                    dimensions=sql.SQL(str(int(dimensions))),
                    user_id=sql.Literal(user_id),
                    model=sql.Literal(model),
                )
                .as_string(cursor.connection)
            )
    except DataError as error:
        # The build leaves an invalid index, which the next run drops and rebuilds.
        raise VectorIndexUnavailable(
            f"cannot index {model!r} at {dimensions} dimensions: {error}".strip()
        ) from None


def vector_indexes_ensure_configured() -> VectorIndexEnsured | None:
    """``vector_index_ensure`` for the configured provider, or None when there is nothing to index
    (no provider, no size known yet, more dimensions than HNSW takes, pgvector without iterative
    scans): what the periodic job runs."""
    from workspace.embeddings import embedding_provider
    from workspace.hnsw import vector_index_supported

    provider = embedding_provider()
    if not provider.name:
        return None
    dimensions = provider.dimensions or stored_dimensions(model=provider.name)
    if dimensions is None or dimensions > HNSW_MAX_DIMENSIONS or not vector_index_supported():
        return None
    return vector_index_ensure(model=provider.name, dimensions=dimensions)
