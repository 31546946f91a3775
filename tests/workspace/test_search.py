from __future__ import annotations

import pytest
from pytest_django.fixtures import Settings as SettingsWrapper

from tests.support.servers import free_port
from tests.workspace.factories import DocumentFactory
from workspace import services
from workspace.embeddings import HashingEmbeddings
from workspace.models import Chunk, Document, IndexState
from workspace.search import fuse_rrf, fuse_weighted, workspace_search

pytestmark = pytest.mark.django_db


def test_rrf_boosts_a_chunk_found_by_both_legs() -> None:
    hits = fuse_rrf([1, 2, 3], [3, 4], k=60, limit=10)

    assert hits[0].chunk_id == 3
    assert (hits[0].fts_rank, hits[0].vector_rank) == (3, 1)
    assert hits[0].score == 1.0
    assert {hit.chunk_id for hit in hits} == {1, 2, 3, 4}


def test_rrf_normalises_a_single_result_to_one() -> None:
    assert [hit.score for hit in fuse_rrf([9], [], k=60, limit=10)] == [1.0]


def test_rrf_smaller_k_widens_the_gap() -> None:
    wide = fuse_rrf([1, 2], [], k=1, limit=10)
    narrow = fuse_rrf([1, 2], [], k=60, limit=10)

    assert wide[1].score < narrow[1].score


def test_rrf_applies_limit_and_min_score() -> None:
    assert fuse_rrf([1, 2, 3], [], k=60, limit=0) == []
    assert len(fuse_rrf([1, 2, 3], [], k=60, limit=2)) == 2
    assert [hit.chunk_id for hit in fuse_rrf([1, 2, 3], [], k=1, limit=10, min_score=0.6)] == [
        1,
        2,
    ]
    assert fuse_rrf([], [], k=60, limit=10) == []


def test_weighted_fusion_favours_the_heavier_leg() -> None:
    hits = fuse_weighted([1, 2], [2, 1], fts_weight=0.3, vector_weight=0.7, limit=10)

    assert [hit.chunk_id for hit in hits] == [2, 1]
    assert hits[0].score == 1.0
    assert hits[1].score == pytest.approx((0.3 + 0.35) / (0.15 + 0.7))


def test_weighted_fusion_is_used_when_configured(settings: SettingsWrapper) -> None:
    settings.SEARCH_FUSION = "weighted"
    settings.SEARCH_FTS_WEIGHT = 1.0
    settings.SEARCH_VECTOR_WEIGHT = 0.0
    services.document_write(user_id="alice", path="a.md", content="Ferns love shade.")

    results = workspace_search(user_id="alice", query="ferns").results

    assert [result.path for result in results] == ["a.md"]
    assert results[0].score == 1.0


def test_hybrid_search_returns_paths_scores_and_both_ranks() -> None:
    services.document_write(user_id="alice", path="garden/ferns.md", content="Ferns love shade.")
    services.document_write(user_id="alice", path="garden/cacti.md", content="Cacti love sun.")

    response = workspace_search(user_id="alice", query="ferns shade")

    assert response.degraded is False
    top = response.results[0]
    assert top.path == "garden/ferns.md"
    assert top.content == "Ferns love shade."
    assert top.score == 1.0
    assert top.fts_rank == 1
    assert top.vector_rank == 1
    assert top.chunk_id == Chunk.objects.get(document__path="garden/ferns.md").pk


@pytest.mark.parametrize(
    "query", ['"foo" AND (bar -baz', "a:b & | ! ( ) :* <-> '", "", "     ", "the"]
)
def test_any_punctuation_in_a_query_is_safe(query: str) -> None:
    services.document_write(user_id="alice", path="a.md", content="foo bar")

    response = workspace_search(user_id="alice", query=query)

    assert isinstance(response.results, list)


def test_fts_and_vector_modes_use_one_leg_each() -> None:
    services.document_write(user_id="alice", path="a.md", content="Ferns love shade.")

    fts = workspace_search(user_id="alice", query="fern", mode="fts").results
    vector = workspace_search(user_id="alice", query="ferns shade", mode="vector").results

    assert (fts[0].fts_rank, fts[0].vector_rank) == (1, None)
    assert (vector[0].fts_rank, vector[0].vector_rank) == (None, 1)


def test_a_tenant_with_little_data_gets_all_its_results_beside_a_huge_tenant(
    settings: SettingsWrapper,
) -> None:
    settings.SEARCH_CANDIDATES = 5
    provider = HashingEmbeddings(settings.EMBEDDING_DIMENSIONS)
    bob_documents = DocumentFactory.create_batch(20, user_id="bob", index_state=IndexState.INDEXED)
    text = "ferns need shade and water"
    vector = provider.embed_one(text)
    Chunk.objects.bulk_create(
        Chunk(
            document=document,
            user_id="bob",
            chunk_index=index,
            content=text,
            source_hash=document.content_hash,
            embedding=vector,
            embedding_model=provider.name,
        )
        for document in bob_documents
        for index in range(10)
    )
    services.document_write(user_id="alice", path="mine/1.md", content="My ferns need shade.")
    services.document_write(user_id="alice", path="mine/2.md", content="Ferns, water daily.")

    results = workspace_search(user_id="alice", query="ferns").results

    assert Chunk.objects.filter(user_id="bob").count() == 200
    assert sorted(result.path for result in results) == ["mine/1.md", "mine/2.md"]
    assert all(result.fts_rank and result.vector_rank for result in results)


def test_failed_query_embedding_falls_back_to_full_text(settings: SettingsWrapper) -> None:
    services.document_write(user_id="alice", path="a.md", content="Ferns love shade.")
    settings.EMBEDDING_PROVIDER = "openai"
    settings.EMBEDDING_BASE_URL = f"http://127.0.0.1:{free_port()}"
    settings.EMBEDDING_MAX_RETRIES = 0

    response = workspace_search(user_id="alice", query="ferns")

    assert response.degraded is True
    assert [result.path for result in response.results] == ["a.md"]
    assert response.results[0].vector_rank is None


def test_failed_document_embedding_keeps_chunks_for_full_text(settings: SettingsWrapper) -> None:
    settings.EMBEDDING_PROVIDER = "openai"
    settings.EMBEDDING_BASE_URL = f"http://127.0.0.1:{free_port()}"
    settings.EMBEDDING_MAX_RETRIES = 0

    services.document_write(user_id="alice", path="a.md", content="Ferns love shade.")

    document = Document.objects.get(path="a.md")
    assert document.index_state == IndexState.FAILED
    assert list(Chunk.objects.values_list("embedding", flat=True)) == [None]
    assert [r.path for r in workspace_search(user_id="alice", query="ferns").results] == ["a.md"]


def test_reindexing_after_a_failure_stores_vectors(settings: SettingsWrapper) -> None:
    settings.EMBEDDING_PROVIDER = "openai"
    settings.EMBEDDING_BASE_URL = f"http://127.0.0.1:{free_port()}"
    settings.EMBEDDING_MAX_RETRIES = 0
    document = services.document_write(user_id="alice", path="a.md", content="Ferns.")
    settings.EMBEDDING_PROVIDER = "hashing"

    outcome = services.document_index(document_id=document.id)

    assert outcome == services.IndexOutcome.INDEXED
    assert Chunk.objects.get().embedding is not None
    assert Document.objects.get().index_state == IndexState.INDEXED


def test_search_never_shows_another_tenants_chunks() -> None:
    services.document_write(user_id="bob", path="b.md", content="ferns ferns ferns")

    assert workspace_search(user_id="alice", query="ferns").results == []
