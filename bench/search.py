"""Search benchmark: the vector leg (and whole hybrid search) with the HNSW index vs the exact scan.

Seeds a scratch database in SQL (random unit vectors, no Python round trips): ``--chunks`` chunks
in ``--tenants`` tenants, one of which holds ``--big``. Measures, in one run, p50/p95 for the big
tenant and for small ones with the exact scan (``SEARCH_VECTOR_INDEX=off``, today's plan), then
builds the index and measures the per-tenant plan (``auto``), with recall@10 against the exact
scan's answers to the same queries.

    .venv/bin/python bench/search.py                                  # quick: 200k chunks, 50k big
    .venv/bin/python bench/search.py --chunks 1000000 --big 200000    # the target size
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from dataclasses import dataclass

os.environ["EMBEDDING_PROVIDER"] = "hashing"
os.environ["EMBEDDING_DIMENSIONS"] = "256"
os.environ.setdefault("WORKSPACE_INDEXING", "inline")

from django.conf import settings
from scratch_database import scratch_database

DIMENSIONS = 256
SEED_BATCH = 50_000
SMALL_TENANTS_SAMPLED = 50
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
            print(
                f"  seeded {stop:>9,} / {total:,} chunks ({time.perf_counter() - started:.0f}s)",
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


def percentiles(times: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(times, n=100, method="inclusive")
    return statistics.median(times), cuts[94]


@dataclass(frozen=True)
class Measurement:
    leg: tuple[float, float]
    hybrid: tuple[float, float]
    answers: list[list[int]]
    plans: str


def measure(
    *, tenants: list[str], vectors: list[list[float]], texts: list[str], model: str
) -> Measurement:
    from workspace.search import vector_leg, workspace_search

    kinds: set[str] = set()

    def leg(index: int) -> list[int]:
        ids, plan = vector_leg(
            user_id=tenants[index % len(tenants)],
            model=model,
            query_vector=vectors[index],
            candidates=settings.SEARCH_CANDIDATES,
        )
        kinds.add(plan.kind)
        return ids

    def hybrid(index: int) -> None:
        workspace_search(user_id=tenants[index % len(tenants)], query=texts[index])

    for index in range(min(5, len(vectors))):
        leg(index)
        hybrid(index)
    answers: list[list[int]] = []
    leg_times: list[float] = []
    hybrid_times: list[float] = []
    for index in range(len(vectors)):
        started = time.perf_counter()
        answers.append(leg(index))
        leg_times.append((time.perf_counter() - started) * 1000)
    for index in range(len(vectors)):
        started = time.perf_counter()
        hybrid(index)
        hybrid_times.append((time.perf_counter() - started) * 1000)
    return Measurement(
        leg=percentiles(leg_times),
        hybrid=percentiles(hybrid_times),
        answers=answers,
        plans="/".join(sorted(kinds)),
    )


def recall_at_10(chosen: list[list[int]], exact: list[list[int]]) -> float:
    found = sum(len(set(a[:10]) & set(b[:10])) for a, b in zip(chosen, exact, strict=True))
    possible = sum(min(10, len(b)) for b in exact)
    return found / possible if possible else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=200_000, help="chunks in all")
    parser.add_argument("--tenants", type=int, default=1000, help="tenants, the big one included")
    parser.add_argument("--big", type=int, default=50_000, help="chunks of the big tenant")
    parser.add_argument("--queries", type=int, default=200, help="queries per measurement")
    parser.add_argument(
        "--uniform", action="store_true", help="vectors uniform on the sphere, not clustered"
    )
    options = parser.parse_args()
    if not 0 < options.big < options.chunks or options.tenants < 2:
        parser.error("need 0 < --big < --chunks and at least 2 tenants")

    with scratch_database("bench_search") as name:
        from django.db import connection

        from workspace.embeddings import embedding_provider
        from workspace.services import vector_index_ensure

        model = embedding_provider().name
        print(
            f"database {name}, {os.cpu_count()} CPUs: {options.chunks:,} chunks, "
            f"{options.tenants} tenants, big tenant {options.big:,}, {DIMENSIONS} dims, "
            f"{'uniform' if options.uniform else f'{CLUSTERS} clusters'}",
            flush=True,
        )
        started = time.perf_counter()
        seed(
            chunks=options.chunks,
            tenants=options.tenants,
            big=options.big,
            model=model,
            uniform=options.uniform,
        )
        print(f"seeded in {time.perf_counter() - started:.0f}s", flush=True)

        rng = random.Random(7)
        vectors = query_vectors(options.queries)
        texts = [f"alpha{rng.randrange(500)} beta{rng.randrange(333)}" for _ in vectors]
        groups = {
            "big": ["tenant-0000"],
            "small": [
                f"tenant-{number:04d}"
                for number in rng.sample(
                    range(1, options.tenants), min(SMALL_TENANTS_SAMPLED, options.tenants - 1)
                )
            ],
        }

        settings.SEARCH_VECTOR_INDEX = "off"
        exact = {
            group: measure(tenants=tenants, vectors=vectors, texts=texts, model=model)
            for group, tenants in groups.items()
        }
        with connection.cursor() as cursor:
            # A bigger budget than the default 64 MB keeps the graph in memory while it is built.
            cursor.execute("SET maintenance_work_mem = '2GB'")
        started = time.perf_counter()
        ensured = vector_index_ensure(model=model, dimensions=DIMENSIONS)
        build_seconds = time.perf_counter() - started
        print(f"index {ensured.name} {ensured.action} in {build_seconds:.0f}s", flush=True)
        settings.SEARCH_VECTOR_INDEX = "auto"
        chosen = {
            group: measure(tenants=tenants, vectors=vectors, texts=texts, model=model)
            for group, tenants in groups.items()
        }

    print()
    print(
        f"== search, {options.queries} queries each, SEARCH_HNSW_MIN_CHUNKS="
        f"{settings.SEARCH_HNSW_MIN_CHUNKS}, ef_search={settings.SEARCH_HNSW_EF_SEARCH} "
        f"(ratio = exact p95 / chosen p95; >1 is faster)"
    )
    header = (
        f"{'tenant':<6} {'what':<11} {'exact p50':>9} {'p95':>7}  {'chosen':<6} "
        f"{'p50':>7} {'p95':>7}  {'ratio p95':>9}  {'recall@10':>9}"
    )
    print(header)
    print("-" * len(header))
    for group in groups:
        recall = recall_at_10(chosen[group].answers, exact[group].answers)
        for what, (exact_p50, exact_p95), (p50, p95) in (
            ("vector leg", exact[group].leg, chosen[group].leg),
            ("hybrid", exact[group].hybrid, chosen[group].hybrid),
        ):
            print(
                f"{group:<6} {what:<11} {exact_p50:9.2f} {exact_p95:7.2f}  "
                f"{chosen[group].plans:<6} {p50:7.2f} {p95:7.2f}  "
                f"{exact_p95 / p95:8.1f}x  {recall:9.3f}"
            )
    print(f"index build: {build_seconds:.0f}s (ms everywhere else)")


if __name__ == "__main__":
    main()
