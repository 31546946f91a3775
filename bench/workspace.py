"""Workspace benchmark: runtime vs semantic writes, and search latency, each against a baseline.

Baseline = the behaviour of the origin system (the Rust agent platform this service re-creates,
whose engine-state writes were indexed like documents under one global lock), measured in the same
run: runtime paths indexed like documents (``WORKSPACE_RUNTIME_PATHS=""``), so every engine-state
write is versioned, chunked and embedded in the write path, and its chunks sit in the search index
beside the real ones.

Runs against its own database (created, migrated, dropped), never the dev database:

    .venv/bin/python bench/workspace.py [--writes 400] [--tenants 100] [--chunks-per-tenant 1000]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import time
import uuid
from collections.abc import Callable

from django.conf import settings
from scratch_database import scratch_database
from threads import run_threads

DIMENSIONS = 256
THREADS = 4
CONTENT_BYTES = 50 * 1024
RUNTIME_DEFAULT = [
    "engine/.runtime/",
    "engine/projects/",
    "engine/orchestrator/failures.json",
    "engine/README.md",
]

random.seed(7)
VOCABULARY = [
    "".join(random.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(random.randint(3, 9)))
    for _ in range(5000)
]


def text_of(words: int, rng: random.Random) -> str:
    return " ".join(rng.choice(VOCABULARY) for _ in range(words))


def fifty_kb(seed: int) -> str:
    rng = random.Random(seed)
    parts: list[str] = []
    size = 0
    while size < CONTENT_BYTES:
        word = rng.choice(VOCABULARY)
        parts.append(word)
        size += len(word) + 1
    return " ".join(parts)[:CONTENT_BYTES]


def rate(label: str, write: Callable[[int, int], None], writes: int) -> float:
    """Writes per second with THREADS threads, each doing writes/THREADS writes."""
    per_thread = writes // THREADS

    def work(number: int) -> list[float]:
        for index in range(per_thread):
            write(number, index)
        return []

    elapsed, _ = run_threads(THREADS, work)
    result = per_thread * THREADS / elapsed
    print(f"  {label}: {result:8.1f} writes/s ({per_thread * THREADS} writes)", flush=True)
    return result


def bench_writes(writes: int) -> dict[str, float]:
    from workspace import services

    contents = [fifty_kb(seed) for seed in range(64)]

    def writer(prefix: str, user: str) -> Callable[[int, int], None]:
        def write(number: int, index: int) -> None:
            # Each thread rewrites a few documents (as an engine checkpoints a thread's state).
            services.document_write(
                user_id=user,
                path=f"{prefix}/thread-{number}-{index % 4}.json",
                content=f"{number}-{index} " + contents[(number * 7 + index) % len(contents)],
            )

        return write

    results: dict[str, float] = {}
    settings.WORKSPACE_INDEXING = "queue"
    settings.WORKSPACE_RUNTIME_PATHS = RUNTIME_DEFAULT
    print("writes (50 KB, 4 threads):", flush=True)
    results["runtime"] = rate(
        "runtime path, runtime rule on", writer("engine/.runtime", "w1"), writes
    )
    results["semantic"] = rate(
        "semantic path, indexing queued", writer("engine/knowledge", "w2"), writes // 2
    )
    settings.WORKSPACE_RUNTIME_PATHS = []
    results["runtime_baseline_queue"] = rate(
        "baseline: runtime path indexed like a document (queued)",
        writer("engine/.runtime", "w3"),
        writes // 2,
    )
    results["semantic_baseline"] = rate(
        "baseline: semantic path (queued)", writer("engine/knowledge", "w4"), writes // 2
    )
    settings.WORKSPACE_INDEXING = "inline"
    settings.WORKSPACE_RUNTIME_PATHS = RUNTIME_DEFAULT
    results["semantic_inline"] = rate(
        "semantic path, indexed inline (chunk + embed before returning)",
        writer("engine/knowledge", "w6"),
        writes // 8,
    )
    settings.WORKSPACE_RUNTIME_PATHS = []
    results["runtime_baseline_inline"] = rate(
        "baseline: runtime path indexed in the write path (origin)",
        writer("engine/.runtime", "w5"),
        writes // 8,
    )
    settings.WORKSPACE_INDEXING = "queue"
    settings.WORKSPACE_RUNTIME_PATHS = RUNTIME_DEFAULT
    return results


def vector_text(vector: list[float] | None) -> str:
    if vector is None:
        return "\\N"
    return "[" + ",".join("0" if value == 0 else f"{value:.4f}" for value in vector) + "]"


def load_chunks(tenants: int, chunks_per_tenant: int, *, prefix: str, words: int) -> int:
    """Bulk-load documents and chunks with COPY (hashing embeddings), as indexing would store."""
    from django.db import connection

    from workspace.embeddings import HashingEmbeddings
    from workspace.services import content_hash

    provider = HashingEmbeddings(DIMENSIONS)
    chunks_per_document = 20
    rng = random.Random(prefix)
    documents = io.StringIO()
    chunks = io.StringIO()
    total = 0
    for tenant in range(tenants):
        user = f"tenant-{tenant:03d}"
        for document_number in range(chunks_per_tenant // chunks_per_document):
            document_id = uuid.uuid4()
            digest = content_hash(f"{user}{prefix}{document_number}")
            path = f"{prefix}/doc-{document_number}.md"
            documents.write(
                f"{document_id}\t{user}\t{path}\t\t{digest}\t{{}}\tf\tindexed\t{digest}\t"
                "2026-01-01\t2026-01-01\n"
            )
            for index in range(chunks_per_document):
                content = text_of(words, rng)
                chunks.write(
                    f"{document_id}\t{user}\t{index}\t{content}\t{digest}\t"
                    f"{vector_text(provider.embed_one(content))}\t{provider.name}\t2026-01-01\n"
                )
                total += 1
    raw = connection.connection
    assert raw is not None
    with raw.cursor() as cursor:
        with cursor.copy(
            "COPY workspace_document (id, user_id, path, content, content_hash, metadata, "
            "is_runtime, index_state, indexed_hash, created_at, updated_at) FROM STDIN"
        ) as copy:
            copy.write(documents.getvalue())
        with cursor.copy(
            "COPY workspace_chunk (document_id, user_id, chunk_index, content, source_hash, "
            "embedding, embedding_model, created_at) FROM STDIN"
        ) as copy:
            copy.write(chunks.getvalue())
        cursor.execute("ANALYZE workspace_document")
        cursor.execute("ANALYZE workspace_chunk")
    raw.commit()
    return total


def latencies(tenants: int, queries: int) -> tuple[float, float, float]:
    """p50 and p95 in ms, and the share of results that are engine runtime state."""
    from workspace.search import workspace_search

    rng = random.Random(11)
    timings: list[float] = []
    results = runtime_results = 0
    for _ in range(queries):
        user = f"tenant-{rng.randrange(tenants):03d}"
        query = f"{rng.choice(VOCABULARY)} {rng.choice(VOCABULARY)}"
        started = time.perf_counter()
        found = workspace_search(user_id=user, query=query, limit=10).results
        timings.append((time.perf_counter() - started) * 1000)
        results += len(found)
        runtime_results += sum(1 for hit in found if hit.path.startswith("engine/.runtime/"))
    timings.sort()
    share = runtime_results / results if results else 0.0
    return statistics.median(timings), timings[int(len(timings) * 0.95) - 1], share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--writes", type=int, default=400)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--chunks-per-tenant", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200)
    options = parser.parse_args()

    with scratch_database("ironclaw_bench_workspace") as name:
        from django.db import connection

        settings.EMBEDDING_PROVIDER = "hashing"
        settings.EMBEDDING_DIMENSIONS = DIMENSIONS
        print(f"database {name}, {os.cpu_count()} CPUs", flush=True)
        writes = bench_writes(options.writes)

        started = time.perf_counter()
        loaded = load_chunks(
            options.tenants, options.chunks_per_tenant, prefix="knowledge", words=80
        )
        print(f"loaded {loaded} chunks in {time.perf_counter() - started:.1f}s", flush=True)
        p50, p95, share = latencies(options.tenants, options.queries)
        # Baseline: the same tenants' engine runtime state indexed too (as many chunks again,
        # JSON-like text), as when runtime paths were treated like documents.
        started = time.perf_counter()
        polluted = load_chunks(
            options.tenants, options.chunks_per_tenant, prefix="engine/.runtime", words=80
        )
        print(f"baseline: +{polluted} runtime chunks in {time.perf_counter() - started:.1f}s")
        settings.WORKSPACE_RUNTIME_PATHS = []
        base_p50, base_p95, base_share = latencies(options.tenants, options.queries)
        connection.close()

        print()
        print("== results (ratio = this design vs baseline; >1 is better)")
        runtime, queued, inline = (
            writes["runtime"],
            writes["runtime_baseline_queue"],
            writes["runtime_baseline_inline"],
        )
        print(
            f"runtime writes/s:  {runtime:9.1f}   baseline (indexed, queued) {queued:8.1f} -> "
            f"x{runtime / queued:.1f}   baseline (indexed in the write path, origin) "
            f"{inline:8.1f} -> x{runtime / inline:.1f}"
        )
        semantic, semantic_base = writes["semantic"], writes["semantic_baseline"]
        print(
            f"semantic writes/s: {semantic:9.1f}   baseline {semantic_base:8.1f} -> "
            f"x{semantic / semantic_base:.2f}   (indexed inline: {writes['semantic_inline']:.1f})"
        )
        print(
            f"search p50 ms:     {p50:9.2f}   baseline {base_p50:8.2f} -> x{base_p50 / p50:.2f}"
            f"   ({loaded} chunks, {options.tenants} tenants; baseline {loaded + polluted})"
        )
        print(f"search p95 ms:     {p95:9.2f}   baseline {base_p95:8.2f} -> x{base_p95 / p95:.2f}")
        print(
            f"search results that are engine runtime state: {share:.0%}   baseline {base_share:.0%}"
        )


if __name__ == "__main__":
    main()
