"""The vector leg's two plans on a seeded data set: HNSW for a big tenant, exact for the rest.

Transactional tests: CREATE INDEX CONCURRENTLY cannot run inside the test's transaction.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from pytest_django.fixtures import Settings as SettingsWrapper

from workspace import hnsw
from workspace import search as search_module
from workspace.embeddings import HashingEmbeddings
from workspace.hnsw import vector_index_cache_clear, vector_index_name
from workspace.search import vector_leg, vector_plan_choose, workspace_search
from workspace.services import vector_index_ensure, vector_index_state

DIMENSIONS = 64
MODEL = HashingEmbeddings(DIMENSIONS).name
BIG_TENANT = ("big", 3000)
MIDDLE_TENANT = ("middle", 700)
SMALL_TENANT = ("small", 30)
THRESHOLD = 500
CANDIDATES = 50

pytestmark = pytest.mark.django_db(transaction=True)


def seed_tenant(user_id: str, chunks: int, *, model: str = MODEL, seed: float = 0.5) -> None:
    """One document and ``chunks`` random unit vectors, generated in SQL (one statement each)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT setseed(%s)", [seed])
        cursor.execute(
            """
            INSERT INTO workspace_document (id, user_id, path, content, content_hash, metadata,
              is_runtime, index_state, indexed_hash, created_at, updated_at)
            VALUES (gen_random_uuid(), %(user_id)s, 'seed.md', '', 'sha256:seed', '{}', false,
              'indexed', 'sha256:seed', now(), now())
            """,
            {"user_id": user_id},
        )
        cursor.execute(
            """
            INSERT INTO workspace_chunk (document_id, user_id, chunk_index, content, source_hash,
              embedding, embedding_model, created_at)
            SELECT d.id, d.user_id, n, 'chunk ' || n, 'sha256:seed',
              l2_normalize((SELECT array_agg(random() - 0.5)
                            FROM generate_series(1, %(dimensions)s + 0 * n))::vector),
              %(model)s, now()
            FROM workspace_document d, generate_series(1, %(chunks)s) AS n
            WHERE d.user_id = %(user_id)s
            """,
            {"user_id": user_id, "chunks": chunks, "dimensions": DIMENSIONS, "model": model},
        )
        cursor.execute("ANALYZE workspace_chunk")


def random_unit_vector(rng: random.Random) -> list[float]:
    vector = [rng.random() - 0.5 for _ in range(DIMENSIONS)]
    norm = sum(value * value for value in vector) ** 0.5
    return [value / norm for value in vector]


def drop_index() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f'DROP INDEX IF EXISTS "{vector_index_name(model=MODEL, dimensions=DIMENSIONS)}"'
        )


@pytest.fixture
def seeded(settings: SettingsWrapper) -> Iterator[None]:
    settings.SEARCH_HNSW_MIN_CHUNKS = THRESHOLD
    settings.SEARCH_CANDIDATES = CANDIDATES
    vector_index_cache_clear()
    for number, (user_id, chunks) in enumerate((BIG_TENANT, MIDDLE_TENANT, SMALL_TENANT)):
        seed_tenant(user_id, chunks, seed=number / 10)
    drop_index()
    yield
    drop_index()
    vector_index_cache_clear()


@pytest.fixture
def indexed(seeded: None) -> None:
    vector_index_ensure(model=MODEL, dimensions=DIMENSIONS)


def leg_ids(user_id: str, query: list[float]) -> tuple[list[int], str]:
    ids, plan = vector_leg(user_id=user_id, model=MODEL, query_vector=query, candidates=CANDIDATES)
    return ids, plan.kind


def exact_ids(user_id: str, query: list[float], settings: SettingsWrapper) -> list[int]:
    settings.SEARCH_VECTOR_INDEX = "off"
    try:
        return leg_ids(user_id, query)[0]
    finally:
        settings.SEARCH_VECTOR_INDEX = "auto"


def recall_at_10(
    user_id: str, settings: SettingsWrapper, queries: int = 20
) -> tuple[float, set[str]]:
    """Share of the exact scan's top 10 that the chosen plan finds, and the plans it chose."""
    rng = random.Random(11)
    found = 0
    kinds: set[str] = set()
    for _ in range(queries):
        query = random_unit_vector(rng)
        chosen, kind = leg_ids(user_id, query)
        kinds.add(kind)
        found += len(set(chosen[:10]) & set(exact_ids(user_id, query, settings)[:10]))
    return found / (10 * queries), kinds


def test_big_tenant_uses_the_index_and_finds_what_the_exact_scan_finds(
    indexed: None, settings: SettingsWrapper
) -> None:
    recall, kinds = recall_at_10(BIG_TENANT[0], settings)

    assert kinds == {"hnsw"}
    assert recall >= 0.9, f"recall@10 of the HNSW path against the exact scan: {recall:.3f}"


def test_small_tenant_recall_is_exact(indexed: None, settings: SettingsWrapper) -> None:
    recall, kinds = recall_at_10(SMALL_TENANT[0], settings)

    assert kinds == {"exact"}
    assert recall == 1.0


def test_hnsw_plan_is_an_index_scan_of_the_model_index(indexed: None) -> None:
    query = random_unit_vector(random.Random(3)).__repr__().replace(" ", "")
    sql = search_module._VECTOR_HNSW_SQL.format(dimensions=DIMENSIONS)

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        cursor.execute(
            "EXPLAIN " + sql,
            {
                "user_id": BIG_TENANT[0],
                "model": MODEL,
                "vector": query,
                "candidates": CANDIDATES,
            },
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())

    assert vector_index_name(model=MODEL, dimensions=DIMENSIONS) in plan


def test_small_tenant_keeps_the_exact_scan_and_gets_all_its_chunks(indexed: None) -> None:
    query = random_unit_vector(random.Random(5))

    ids, kind = leg_ids(SMALL_TENANT[0], query)

    assert kind == "exact"
    assert len(ids) == SMALL_TENANT[1]


def test_no_tenant_gets_fewer_candidates_because_another_has_more_data(indexed: None) -> None:
    rng = random.Random(9)

    for _ in range(10):
        query = random_unit_vector(rng)
        big, big_kind = leg_ids(BIG_TENANT[0], query)
        middle, middle_kind = leg_ids(MIDDLE_TENANT[0], query)
        small, small_kind = leg_ids(SMALL_TENANT[0], query)

        assert (big_kind, middle_kind, small_kind) == ("hnsw", "hnsw", "exact")
        assert (len(big), len(middle), len(small)) == (CANDIDATES, CANDIDATES, SMALL_TENANT[1])


def test_hnsw_candidates_come_back_in_exact_distance_order(
    indexed: None, settings: SettingsWrapper
) -> None:
    query = random_unit_vector(random.Random(13))

    ids, kind = leg_ids(BIG_TENANT[0], query)

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, embedding <=> %s::vector FROM workspace_chunk WHERE id = ANY(%s)",
            [str(query).replace(" ", ""), ids],
        )
        distance = dict(cursor.fetchall())
    assert kind == "hnsw"
    assert [distance[chunk_id] for chunk_id in ids] == sorted(distance[i] for i in ids)


def test_without_the_index_a_big_tenant_is_scanned_exactly(seeded: None) -> None:
    plan = vector_plan_choose(user_id=BIG_TENANT[0], model=MODEL, dimensions=DIMENSIONS)

    assert plan.kind == "exact"
    assert "no valid HNSW index" in plan.reason


def test_search_vector_index_off_keeps_the_exact_scan(
    indexed: None, settings: SettingsWrapper
) -> None:
    settings.SEARCH_VECTOR_INDEX = "off"

    ids, kind = leg_ids(BIG_TENANT[0], random_unit_vector(random.Random(1)))

    assert kind == "exact"
    assert len(ids) == CANDIDATES


def test_pgvector_without_iterative_scans_falls_back_to_the_exact_scan_and_says_so_once(
    indexed: None, settings: SettingsWrapper, caplog: pytest.LogCaptureFixture
) -> None:
    # The server's pgvector cannot be downgraded here: pretend the detected version is 0.7.4.
    hnsw._pgvector_version = (0, 7, 4)
    settings.EMBEDDING_DIMENSIONS = DIMENSIONS
    query = random_unit_vector(random.Random(2))

    with caplog.at_level(logging.WARNING, logger="workspace.hnsw"):
        ids, kind = leg_ids(BIG_TENANT[0], query)
        leg_ids(BIG_TENANT[0], query)
        response = workspace_search(user_id=BIG_TENANT[0], query="chunk 7", mode="vector")

    assert kind == "exact"
    assert ids == exact_ids(BIG_TENANT[0], query, settings)
    assert response.vector_plan is not None
    assert response.vector_plan.kind == "exact"
    assert len(response.results) == 10
    warnings = [record for record in caplog.records if "iterative" in record.getMessage()]
    assert len(warnings) == 1


def test_search_response_shows_the_vector_plan(indexed: None, settings: SettingsWrapper) -> None:
    settings.EMBEDDING_DIMENSIONS = DIMENSIONS

    big = workspace_search(user_id=BIG_TENANT[0], query="chunk 12")
    small = workspace_search(user_id=SMALL_TENANT[0], query="chunk 12")
    fts = workspace_search(user_id=SMALL_TENANT[0], query="chunk 12", mode="fts")

    assert big.vector_plan is not None
    assert big.vector_plan.kind == "hnsw"
    assert small.vector_plan is not None
    assert small.vector_plan.kind == "exact"
    assert fts.vector_plan is None
    assert big.results
    assert small.results


def test_search_statements_are_never_prepared_even_with_server_side_binding(
    indexed: None, settings: SettingsWrapper
) -> None:
    import psycopg

    settings.EMBEDDING_DIMENSIONS = DIMENSIONS
    connection.ensure_connection()
    raw = connection.connection
    original = (raw.cursor_factory, raw.prepare_threshold)
    # Server-side binding, prepared from the first execution: what a deployment could configure.
    raw.cursor_factory, raw.prepare_threshold = psycopg.Cursor, 0
    try:
        for user_id in (BIG_TENANT[0], SMALL_TENANT[0]) * 3:
            workspace_search(user_id=user_id, query="chunk 3")
        with connection.cursor() as cursor:
            cursor.execute("SELECT statement FROM pg_prepared_statements")
            prepared = [row[0] for row in cursor.fetchall()]
    finally:
        raw.cursor_factory, raw.prepare_threshold = original

    assert any("pg_prepared_statements" in statement for statement in prepared)
    assert not any("workspace_chunk" in statement for statement in prepared)


def test_vector_index_ensure_command_is_idempotent_and_dry_run_changes_nothing(
    seeded: None, settings: SettingsWrapper
) -> None:
    settings.EMBEDDING_DIMENSIONS = DIMENSIONS
    name = vector_index_name(model=MODEL, dimensions=DIMENSIONS)

    def run(*args: str) -> str:
        out = StringIO()
        call_command("vector_index_ensure", *args, stdout=out)
        return out.getvalue()

    dry = run("--dry-run")
    state_after_dry_run = vector_index_state(name=name)
    created = run()
    again = run()

    assert "would create" in dry
    assert state_after_dry_run == "missing"
    assert "created" in created
    assert vector_index_state(name=name) == "valid"
    assert "nothing to do" in again


def test_index_name_is_deterministic_and_fits_an_identifier() -> None:
    long_model = "some-org/a-very-long-embedding-model-name-v3-large-" * 3

    name = vector_index_name(model=long_model, dimensions=1536)

    assert name == vector_index_name(model=long_model, dimensions=1536)
    assert name != vector_index_name(model=long_model, dimensions=1024)
    assert len(name) <= 63


def test_a_chunk_of_the_same_model_name_but_another_size_is_still_stored(indexed: None) -> None:
    # An openai provider whose EMBEDDING_DIMENSIONS changed writes the same model name with
    # another size; the index's cast must not refuse those rows.
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO workspace_chunk (document_id, user_id, chunk_index, content, source_hash,
              embedding, embedding_model, created_at)
            SELECT d.id, d.user_id, 100000, 'other size', 'sha256:seed', '[1,0,0]'::vector,
              %(model)s, now()
            FROM workspace_document d WHERE d.user_id = 'big'
            """,
            {"model": MODEL},
        )
        inserted = cursor.rowcount

    assert inserted == 1
