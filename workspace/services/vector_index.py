"""Build the HNSW index the vector leg uses for big tenants (see ``workspace.hnsw``)."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import DataError, connection
from psycopg import sql

from workspace.hnsw import HNSW_MAX_DIMENSIONS, vector_index_name


@dataclass(frozen=True)
class VectorIndexEnsured:
    name: str
    model: str
    dimensions: int
    # "present" (valid already), "created", "rebuilt" (an invalid one, left by an interrupted
    # concurrent build, was dropped first), or with dry_run "would create" / "would rebuild".
    action: str


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


def vector_index_ensure(
    *, model: str, dimensions: int, dry_run: bool = False
) -> VectorIndexEnsured:
    """Create the partial HNSW index for ``model`` at ``dimensions`` if it is missing or invalid.

    ``CREATE INDEX CONCURRENTLY``: writes go on during the build, so it must run outside any
    transaction. Idempotent: a valid index is left alone.
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
    name = vector_index_name(model=model, dimensions=dimensions)
    state = vector_index_state(name=name)
    if state == "valid":
        return VectorIndexEnsured(name, model, dimensions, "present")
    if dry_run:
        action = "would rebuild" if state == "invalid" else "would create"
        return VectorIndexEnsured(name, model, dimensions, action)
    try:
        _build(name=name, model=model, dimensions=dimensions, drop_first=state == "invalid")
    except DataError as error:
        # A row of this model with another size fails the cast; the build leaves an invalid
        # index, which the next run drops and rebuilds.
        raise VectorIndexUnavailable(
            f"cannot index {model!r} at {dimensions} dimensions: {error}".strip()
        ) from None
    return VectorIndexEnsured(
        name, model, dimensions, "rebuilt" if state == "invalid" else "created"
    )


def _build(*, name: str, model: str, dimensions: int, drop_first: bool) -> None:
    with connection.cursor() as cursor:
        if drop_first:
            cursor.execute(
                sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}")
                .format(sql.Identifier(name))
                .as_string(cursor.connection)
            )
        # The predicate's literal must match the query's model value for the planner to use the
        # partial index; the cast's size is a type modifier, so it cannot be a parameter either.
        # The size is in the predicate too: a chunk of the same model name but another size (an
        # openai provider whose EMBEDDING_DIMENSIONS changed) is left out instead of failing the
        # cast, which would refuse its insert.
        cursor.execute(
            sql.SQL(
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON workspace_chunk "
                "USING hnsw ((embedding::vector({dimensions})) vector_cosine_ops) "
                "WHERE embedding_model = {model} AND vector_dims(embedding) = {dimensions}"
            )
            .format(
                name=sql.Identifier(name),
                dimensions=sql.SQL(str(int(dimensions))),
                model=sql.Literal(model),
            )
            .as_string(cursor.connection)
        )
