"""Search benchmark: the vector leg and hybrid search per tenant class, as the data grows.

For each size, seeds a scratch database in SQL (random unit vectors, no Python round trips) with
``--tenants`` tenants, the biggest holding a fifth of the chunks (``--big-share``), the others
sharing the rest. Measures, in one run, p50/p95 of the vector leg and of the whole hybrid search
for the big tenant and for small ones with the exact scan (``SEARCH_VECTOR_INDEX=off``, the
baseline), then runs ``vector_index_ensure`` (the big tenant's own HNSW index, its recall measured
and its ef_search calibrated) and measures the chosen plans (``auto``) with recall@10 against the
exact scan's answers to the same queries, and the plan choice alone. Prints one scaling curve:
build time, index size, p50/p95 and recall for each size, vector distribution and tenant class.

    .venv/bin/python bench/search.py                          # quick: 200k chunks, clustered
    .venv/bin/python bench/search.py --sizes 100000,1000000,3000000 --uniform-too   # the curve
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
from search_seed import CLUSTERS, DIMENSIONS, query_vectors, seed

SMALL_TENANTS_SAMPLED = 50


def percentiles(times: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(times, n=100, method="inclusive")
    return statistics.median(times), cuts[94]


@dataclass(frozen=True)
class Measurement:
    leg: tuple[float, float]
    hybrid: tuple[float, float]
    plan: tuple[float, float]
    answers: list[list[int]]
    plans: str


def measure(
    *, tenants: list[str], vectors: list[list[float]], texts: list[str], model: str
) -> Measurement:
    from workspace.search import vector_leg, vector_plan_choose, workspace_search

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

    def plan(index: int) -> None:
        vector_plan_choose(
            user_id=tenants[index % len(tenants)], model=model, dimensions=DIMENSIONS
        )

    for index in range(min(5, len(vectors))):
        leg(index)
        hybrid(index)
    answers: list[list[int]] = []
    times: dict[str, list[float]] = {"leg": [], "hybrid": [], "plan": []}
    for index in range(len(vectors)):
        started = time.perf_counter()
        answers.append(leg(index))
        times["leg"].append((time.perf_counter() - started) * 1000)
    for name, run in (("hybrid", hybrid), ("plan", plan)):
        for index in range(len(vectors)):
            started = time.perf_counter()
            run(index)
            times[name].append((time.perf_counter() - started) * 1000)
    return Measurement(
        leg=percentiles(times["leg"]),
        hybrid=percentiles(times["hybrid"]),
        plan=percentiles(times["plan"]),
        answers=answers,
        plans="/".join(sorted(kinds)),
    )


def recall_at_10(chosen: list[list[int]], exact: list[list[int]]) -> float:
    found = sum(len(set(a[:10]) & set(b[:10])) for a, b in zip(chosen, exact, strict=True))
    possible = sum(min(10, len(b)) for b in exact)
    return found / possible if possible else 1.0


@dataclass(frozen=True)
class Row:
    size: int
    vectors: str
    group: str
    build_seconds: float
    index_mb: float
    index_recall: float
    ef_search: int
    exact: Measurement
    chosen: Measurement


def run_size(*, chunks: int, options: argparse.Namespace, uniform: bool) -> list[Row]:
    big = int(chunks * options.big_share)
    with scratch_database("bench_search") as name:
        from django.db import connection

        from workspace.embeddings import embedding_provider
        from workspace.models import TenantVectorIndex
        from workspace.services import vector_index_ensure

        model = embedding_provider().name
        vectors_kind = "uniform" if uniform else "clustered"
        print(
            f"database {name}, {os.cpu_count()} CPUs: {chunks:,} chunks, {options.tenants} "
            f"tenants, big tenant {big:,}, {DIMENSIONS} dims, {vectors_kind}",
            flush=True,
        )
        started = time.perf_counter()
        seed(chunks=chunks, tenants=options.tenants, big=big, model=model, uniform=uniform)
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
            # More than the default 64 MB keeps the graph in memory while it is built.
            cursor.execute(f"SET maintenance_work_mem = '{options.maintenance_work_mem}'")
        started = time.perf_counter()
        ensured = vector_index_ensure(model=model, dimensions=DIMENSIONS)
        build_seconds = time.perf_counter() - started
        index = TenantVectorIndex.objects.get(user_id="tenant-0000")
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_relation_size(%s::regclass)", [index.name])
            index_mb = cursor.fetchone()[0] / 2**20
        print(
            f"vector_index_ensure in {build_seconds:.0f}s: "
            + ", ".join(f"{b.user_id} {b.action} {b.seconds:.0f}s" for b in ensured.built)
            + f"; recall@10 {index.recall:.3f} at ef_search {index.ef_search}, {index_mb:.0f} MB"
            + f", {index.index_ms:.1f} ms a query against {index.exact_ms:.1f} ms exact",
            flush=True,
        )
        settings.SEARCH_VECTOR_INDEX = "auto"
        chosen = {
            group: measure(tenants=tenants, vectors=vectors, texts=texts, model=model)
            for group, tenants in groups.items()
        }
    return [
        Row(
            size=chunks,
            vectors=vectors_kind,
            group=group,
            build_seconds=build_seconds if group == "big" else 0.0,
            index_mb=index_mb if group == "big" else 0.0,
            index_recall=index.recall if group == "big" else 1.0,
            ef_search=index.ef_search if group == "big" else 0,
            exact=exact[group],
            chosen=chosen[group],
        )
        for group in groups
    ]


def print_curve(rows: list[Row], options: argparse.Namespace) -> None:
    print()
    print(
        f"== search scaling, {options.queries} queries per cell, {DIMENSIONS} dims, big tenant "
        f"{options.big_share:.0%} of the chunks, {options.tenants} tenants, SEARCH_HNSW_MIN_CHUNKS="
        f"{settings.SEARCH_HNSW_MIN_CHUNKS}, SEARCH_RECALL_FLOOR={settings.SEARCH_RECALL_FLOOR}; "
        f"ms except build (s) and index (MB); exact = the exact scan's p50/p95 (baseline)"
    )
    header = (
        f"{'chunks':>9} {'vectors':<9} {'tenant':<6} {'build':>6} {'index':>6} {'ef':>4}  "
        f"{'plan':<5} {'recall':>6}  {'leg p50':>7} {'p95':>6} {'exact':>13}  "
        f"{'hybrid p50':>10} {'p95':>6} {'exact':>13}  {'choice p50':>10} {'p95':>5}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        recall = recall_at_10(row.chosen.answers, row.exact.answers)
        build = f"{row.build_seconds:6.0f} {row.index_mb:6.0f} {row.ef_search:4d}"
        if row.group != "big":
            build = f"{'':>6} {'':>6} {'':>4}"
        print(
            f"{row.size:>9,} {row.vectors:<9} {row.group:<6} {build}  {row.chosen.plans:<5} "
            f"{recall:6.3f}  {row.chosen.leg[0]:7.2f} {row.chosen.leg[1]:6.2f} "
            f"{row.exact.leg[0]:6.1f}/{row.exact.leg[1]:6.1f}  "
            f"{row.chosen.hybrid[0]:10.2f} {row.chosen.hybrid[1]:6.2f} "
            f"{row.exact.hybrid[0]:6.1f}/{row.exact.hybrid[1]:6.1f}  "
            f"{row.chosen.plan[0]:10.3f} {row.chosen.plan[1]:5.3f}"
        )
    print(
        "recall: the chosen plan's recall@10 against the exact scan on the bench's queries "
        "(vector_index_ensure measured its own at build on the tenant's sample); choice: "
        f"vector_plan_choose alone. {CLUSTERS} clusters when clustered."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="200000", help="comma-separated chunk counts (default 200000)"
    )
    parser.add_argument("--tenants", type=int, default=1000, help="tenants, the big one included")
    parser.add_argument("--big-share", type=float, default=0.2, help="the big tenant's share")
    parser.add_argument("--queries", type=int, default=200, help="queries per measurement")
    parser.add_argument("--uniform", action="store_true", help="only vectors uniform on the sphere")
    parser.add_argument("--uniform-too", action="store_true", help="clustered, then uniform")
    parser.add_argument("--maintenance-work-mem", default="4GB", help="for the index build")
    options = parser.parse_args()
    sizes = [int(size) for size in options.sizes.split(",")]
    if not 0 < options.big_share < 1 or options.tenants < 2 or min(sizes) < options.tenants:
        parser.error("need 0 < --big-share < 1, at least 2 tenants, more chunks than tenants")
    kinds = [True] if options.uniform else [False, True] if options.uniform_too else [False]
    rows: list[Row] = []
    for uniform in kinds:
        for chunks in sizes:
            rows += run_size(chunks=chunks, options=options, uniform=uniform)
            print_curve(rows, options)


if __name__ == "__main__":
    main()
