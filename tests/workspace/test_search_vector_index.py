"""The vector leg's plans on a seeded data set: a big tenant's own HNSW index, exact for the rest.

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
from pytest_django import DjangoAssertNumQueries
from pytest_django.fixtures import Settings as SettingsWrapper

from workspace import hnsw
from workspace.embeddings import HashingEmbeddings
from workspace.hnsw import model_vector_index_name, vector_index_cache_clear, vector_index_name
from workspace.models import TenantVectorIndex
from workspace.search import vector_leg, vector_plan_choose, workspace_search
from workspace.services import vector_index_ensure, vector_index_state
from workspace.tasks import vector_index_ensure_job

DIMENSIONS = 64
MODEL = HashingEmbeddings(DIMENSIONS).name
BIG_TENANT = ("big", 3000)
MIDDLE_TENANT = ("middle", 700)
SMALL_TENANT = ("small", 30)
THRESHOLD = 500
CANDIDATES = 50

pytestmark = pytest.mark.django_db(transaction=True)


def seed_tenant(
    user_id: str, chunks: int, *, model: str = MODEL, seed: float = 0.5, path: str = "seed.md"
) -> None:
    """One document and ``chunks`` random unit vectors, generated in SQL (one statement each)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT setseed(%s)", [seed])
        cursor.execute(
            """
            INSERT INTO workspace_document (id, user_id, path, content, content_hash, metadata,
              is_runtime, index_state, indexed_hash, created_at, updated_at)
            VALUES (gen_random_uuid(), %(user_id)s, %(path)s, '', 'sha256:seed', '{}', false,
              'indexed', 'sha256:seed', now(), now())
            """,
            {"user_id": user_id, "path": path},
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
            WHERE d.user_id = %(user_id)s AND d.path = %(path)s
            """,
            {
                "user_id": user_id,
                "path": path,
                "chunks": chunks,
                "dimensions": DIMENSIONS,
                "model": model,
            },
        )
        cursor.execute("ANALYZE workspace_chunk")


def random_unit_vector(rng: random.Random) -> list[float]:
    vector = [rng.random() - 0.5 for _ in range(DIMENSIONS)]
    norm = sum(value * value for value in vector) ** 0.5
    return [value / norm for value in vector]


def index_name(user_id: str) -> str:
    return vector_index_name(user_id=user_id, model=MODEL, dimensions=DIMENSIONS)


def drop_indexes() -> None:
    """The indexes are not rolled back between transactional tests: drop them all."""
    names = [index_name(user_id) for user_id, _ in (BIG_TENANT, MIDDLE_TENANT, SMALL_TENANT)]
    names.append(model_vector_index_name(model=MODEL, dimensions=DIMENSIONS))
    with connection.cursor() as cursor:
        for name in names:
            cursor.execute(f'DROP INDEX IF EXISTS "{name}"')
    TenantVectorIndex.objects.all().delete()


@pytest.fixture
def seeded(settings: SettingsWrapper) -> Iterator[None]:
    settings.SEARCH_HNSW_MIN_CHUNKS = THRESHOLD
    settings.SEARCH_CANDIDATES = CANDIDATES
    vector_index_cache_clear()
    for number, (user_id, chunks) in enumerate((BIG_TENANT, MIDDLE_TENANT, SMALL_TENANT)):
        seed_tenant(user_id, chunks, seed=number / 10)
    drop_indexes()
    yield
    drop_indexes()
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


def explain_hnsw(user_id: str) -> str:
    query = random_unit_vector(random.Random(3)).__repr__().replace(" ", "")
    sql = hnsw.VECTOR_HNSW_SQL.format(dimensions=DIMENSIONS)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        cursor.execute(
            "EXPLAIN " + sql,
            {"user_id": user_id, "model": MODEL, "vector": query, "candidates": CANDIDATES},
        )
        return "\n".join(row[0] for row in cursor.fetchall())


def test_each_big_tenant_is_an_index_scan_of_its_own_index(indexed: None) -> None:
    big_plan = explain_hnsw(BIG_TENANT[0])
    middle_plan = explain_hnsw(MIDDLE_TENANT[0])

    # Its own index only holds its rows: the scan never wades through another tenant's points.
    assert f"Index Scan using {index_name(BIG_TENANT[0])}" in big_plan
    assert f"Index Scan using {index_name(MIDDLE_TENANT[0])}" in middle_plan
    assert vector_index_state(name=index_name(SMALL_TENANT[0])) == "missing"


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
    assert "no HNSW index" in plan.reason


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

    def run(*args: str) -> str:
        out = StringIO()
        call_command("vector_index_ensure", *args, stdout=out)
        return out.getvalue()

    dry = run("--dry-run")
    state_after_dry_run = vector_index_state(name=index_name(BIG_TENANT[0]))
    created = run()
    again = run()

    assert "would create the index of 'big'" in dry
    assert "would create the index of 'middle'" in dry
    assert state_after_dry_run == "missing"
    assert "Index of 'big' created (3000 chunks)" in created
    assert "recall@10" in created
    assert [
        vector_index_state(name=index_name(user)) for user, _ in (BIG_TENANT, MIDDLE_TENANT)
    ] == [
        "valid",
        "valid",
    ]
    assert vector_index_state(name=index_name(SMALL_TENANT[0])) == "missing"
    assert "Nothing to do" in again


def test_index_name_is_deterministic_and_fits_an_identifier() -> None:
    long_model = "some-org/a-very-long-embedding-model-name-v3-large-" * 3
    user = "tenant-" * 30

    name = vector_index_name(user_id=user, model=long_model, dimensions=1536)

    assert name == vector_index_name(user_id=user, model=long_model, dimensions=1536)
    assert name != vector_index_name(user_id=user, model=long_model, dimensions=1024)
    assert name != vector_index_name(user_id=user + "x", model=long_model, dimensions=1536)
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


def test_a_tenant_grown_past_the_threshold_gets_its_index_from_the_periodic_job(
    indexed: None,
) -> None:
    query = random_unit_vector(random.Random(4))
    seed_tenant(SMALL_TENANT[0], THRESHOLD, path="grown.md")

    before = leg_ids(SMALL_TENANT[0], query)
    vector_index_ensure_job(0)
    ids, kind = leg_ids(SMALL_TENANT[0], query)

    # Until the job runs, the grown tenant is scanned exactly: slower, never incomplete.
    assert (len(before[0]), before[1]) == (CANDIDATES, "exact")
    assert kind == "hnsw"
    assert len(ids) == CANDIDATES
    assert vector_index_state(name=index_name(SMALL_TENANT[0])) == "valid"


def test_a_tenant_shrunk_to_half_the_threshold_loses_its_index(indexed: None) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM workspace_chunk WHERE user_id = %s AND chunk_index > %s",
            [MIDDLE_TENANT[0], THRESHOLD // 2],
        )

    result = vector_index_ensure(model=MODEL, dimensions=DIMENSIONS)
    plan = vector_plan_choose(user_id=MIDDLE_TENANT[0], model=MODEL, dimensions=DIMENSIONS)

    assert result.dropped == [index_name(MIDDLE_TENANT[0])]
    assert result.present == [BIG_TENANT[0]]
    assert vector_index_state(name=index_name(MIDDLE_TENANT[0])) == "missing"
    assert not TenantVectorIndex.objects.filter(user_id=MIDDLE_TENANT[0]).exists()
    assert plan.kind == "exact"


def test_below_the_recall_floor_the_tenant_is_scanned_exactly(
    indexed: None, settings: SettingsWrapper
) -> None:
    # What a build over vectors HNSW serves badly records (uniform ones, say).
    TenantVectorIndex.objects.filter(user_id=BIG_TENANT[0]).update(recall=0.5)
    query = random_unit_vector(random.Random(6))

    plan = vector_plan_choose(user_id=BIG_TENANT[0], model=MODEL, dimensions=DIMENSIONS)
    ids, kind = leg_ids(BIG_TENANT[0], query)

    assert plan.kind == "exact"
    assert "recall@10 0.50 is below 0.95" in plan.reason
    assert kind == "exact"
    assert ids == exact_ids(BIG_TENANT[0], query, settings)


def test_the_build_raises_ef_search_until_the_measured_recall_reaches_the_floor(
    seeded: None, settings: SettingsWrapper
) -> None:
    settings.SEARCH_HNSW_EF_SEARCH = 1
    settings.SEARCH_RECALL_FLOOR = 1.0

    result = vector_index_ensure(model=MODEL, dimensions=DIMENSIONS)
    big = TenantVectorIndex.objects.get(user_id=BIG_TENANT[0])
    plan = vector_plan_choose(user_id=BIG_TENANT[0], model=MODEL, dimensions=DIMENSIONS)

    assert [built.action for built in result.built] == ["created", "created"]
    assert big.ef_search > 1
    assert big.recall == 1.0 or big.ef_search == 1000
    assert big.index_ms > 0
    assert big.exact_ms > 0
    assert plan.kind == ("hnsw" if big.recall == 1.0 else "exact")
    assert plan.ef_search == (big.ef_search if plan.kind == "hnsw" else 0)


def test_the_plan_choice_is_one_statement_whatever_the_tenant(
    indexed: None, django_assert_num_queries: DjangoAssertNumQueries
) -> None:
    vector_plan_choose(user_id=SMALL_TENANT[0], model=MODEL, dimensions=DIMENSIONS)
    kinds = []

    for user_id in (BIG_TENANT[0], SMALL_TENANT[0]):
        with django_assert_num_queries(1):
            kinds.append(
                vector_plan_choose(user_id=user_id, model=MODEL, dimensions=DIMENSIONS).kind
            )

    assert kinds == ["hnsw", "exact"]


def test_ensure_drops_the_model_wide_index_of_earlier_releases(seeded: None) -> None:
    legacy = model_vector_index_name(model=MODEL, dimensions=DIMENSIONS)
    with connection.cursor() as cursor:
        cursor.execute(
            f'CREATE INDEX "{legacy}" ON workspace_chunk USING hnsw '
            f"((embedding::vector({DIMENSIONS})) vector_cosine_ops) "
            f"WHERE embedding_model = %s AND vector_dims(embedding) = {DIMENSIONS}",
            [MODEL],
        )

    result = vector_index_ensure(model=MODEL, dimensions=DIMENSIONS)

    assert result.dropped == [legacy]
    assert vector_index_state(name=legacy) == "missing"
