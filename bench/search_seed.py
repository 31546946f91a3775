"""Seeding for `bench/search.py`: chunks with random vectors made in SQL, and queries near them."""

from __future__ import annotations

import time

DIMENSIONS = 256
SEED_BATCH = 50_000
CLUSTERS = 1000


def seed(*, chunks: int, tenants: int, big: int, model: str, uniform: bool) -> None:
    """Tenant 0 holds ``big`` chunks, the others share the rest evenly; one document each.

    Vectors are clustered (a random centre out of CLUSTERS plus noise), as real embeddings are;
    ``uniform`` spreads them uniformly on the sphere instead, the adversarial case for HNSW, where
    every point is almost equally far from every other.
    """
    from django.db import connection

    small_each = max(1, (chunks - big) // max(1, tenants - 1))
    with connection.cursor() as cursor:
        cursor.execute("SELECT setseed(0.42)")
        cursor.execute(
            """
            CREATE TEMPORARY TABLE bench_centre AS
            SELECT k, (SELECT array_agg((random() - 0.5) * %s)
                       FROM generate_series(1, %s + 0 * k))::vector AS v
            FROM generate_series(0, %s - 1) AS k
            """,
            # Centres of norm about 6 against noise of norm about 4.6 (256 x U(-0.5, 0.5)).
            [0.0 if uniform else 1.3, DIMENSIONS, CLUSTERS],
        )
        cursor.execute(
            """
            INSERT INTO workspace_document (id, user_id, path, content, content_hash, metadata,
              is_runtime, index_state, indexed_hash, created_at, updated_at)
            SELECT gen_random_uuid(), 'tenant-' || lpad(t::text, 4, '0'), 'seed.md', '',
              'sha256:seed', '{}', false, 'indexed', 'sha256:seed', now(), now()
            FROM generate_series(0, %s - 1) AS t
            """,
            [tenants],
        )
        # Rows are laid out tenant after tenant: chunk n of the big tenant for n < big, then the
        # small tenants' in turn. Words from a small vocabulary give the full-text leg real work.
        total = big + small_each * (tenants - 1)
        started = time.perf_counter()
        for start in range(0, total, SEED_BATCH):
            stop = min(total, start + SEED_BATCH)
            cursor.execute(
                """
                INSERT INTO workspace_chunk (document_id, user_id, chunk_index, content,
                  source_hash, embedding, embedding_model, created_at)
                SELECT d.id, d.user_id, n, 'alpha' || (n %% 500) || ' beta' || (n %% 333),
                  'sha256:seed',
                  l2_normalize((SELECT v FROM bench_centre
                                 WHERE k = (n::bigint * 7919) %% %(clusters)s)
                               + (SELECT array_agg(random() - 0.5)
                                  FROM generate_series(1, %(dimensions)s + 0 * n))::vector),
                  %(model)s, now()
                FROM generate_series(%(start)s, %(stop)s - 1) AS n
                JOIN workspace_document d ON d.user_id = 'tenant-' || lpad((CASE
                    WHEN n < %(big)s THEN 0 ELSE 1 + (n - %(big)s) / %(small_each)s END)::text,
                  4, '0')
                """,
                {
                    "dimensions": DIMENSIONS,
                    "model": model,
                    "start": start,
                    "stop": stop,
                    "big": big,
                    "small_each": small_each,
                    "clusters": CLUSTERS,
                },
            )
            if stop == total or stop % (10 * SEED_BATCH) == 0:
                print(
                    f"  seeded {stop:>9,} / {total:,} chunks "
                    f"({time.perf_counter() - started:.0f}s)",
                    flush=True,
                )
        cursor.execute("VACUUM ANALYZE workspace_chunk")
        cursor.execute("VACUUM ANALYZE workspace_document")


def query_vectors(count: int) -> list[list[float]]:
    """Stored vectors with a little noise: a query near the data, as a real query is."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT setseed(0.7)")
        cursor.execute(
            """
            SELECT l2_normalize(embedding + (SELECT array_agg((random() - 0.5) * 0.05)
                                             FROM generate_series(1, %s + 0 * id))::vector)::text
            FROM workspace_chunk ORDER BY random() LIMIT %s
            """,
            [DIMENSIONS, count],
        )
        return [[float(value) for value in row[0].strip("[]").split(",")] for row in cursor]
