from __future__ import annotations

import time
from typing import Any

import pytest

from tests.support.embeddings_server import FakeEmbeddingsServer
from tests.support.servers import free_port
from workspace.embeddings import EmbeddingError, HashingEmbeddings, OpenAIEmbeddings


def provider_for(server: FakeEmbeddingsServer, **kwargs: Any) -> OpenAIEmbeddings:
    options: dict[str, Any] = {
        "base_url": server.url,
        "model": "test-model",
        "api_key": "sk-test",
        "timeout": 2.0,
        "batch_size": 2,
        "max_retries": 2,
        "backoff_seconds": 0.01,
    }
    options.update(kwargs)
    return OpenAIEmbeddings(**options)


def test_openai_provider_batches_requests_and_orders_by_index(
    embeddings_server: FakeEmbeddingsServer,
) -> None:
    provider = provider_for(embeddings_server, dimensions=4)

    vectors = provider.embed(["a", "bb", "ccc", "dddd", "eeeee"])

    assert vectors == [[1.0] * 4, [2.0] * 4, [3.0] * 4, [4.0] * 4, [5.0] * 4]
    assert [len(request["input"]) for request in embeddings_server.requests] == [2, 2, 1]
    assert embeddings_server.requests[0]["model"] == "test-model"
    assert embeddings_server.requests[0]["dimensions"] == 4
    assert embeddings_server.headers[0]["Authorization"] == "Bearer sk-test"
    assert provider.name == "test-model-4"


def test_openai_provider_accepts_a_base_url_ending_in_v1(
    embeddings_server: FakeEmbeddingsServer,
) -> None:
    provider = provider_for(embeddings_server, base_url=f"{embeddings_server.url}/v1/")

    assert provider.embed(["xy"]) == [[2.0, 2.0, 2.0]]


def test_openai_provider_retries_server_errors_with_backoff(
    embeddings_server: FakeEmbeddingsServer,
) -> None:
    embeddings_server.fail_first = 2

    vectors = provider_for(embeddings_server).embed(["abc"])

    assert vectors == [[3.0, 3.0, 3.0]]
    assert len(embeddings_server.requests) == 3


def test_openai_provider_gives_up_after_the_retries(
    embeddings_server: FakeEmbeddingsServer,
) -> None:
    embeddings_server.fail_first = 10

    with pytest.raises(EmbeddingError, match="HTTP 500"):
        provider_for(embeddings_server, max_retries=1).embed(["abc"])

    assert len(embeddings_server.requests) == 2


def test_openai_provider_does_not_retry_client_errors(
    embeddings_server: FakeEmbeddingsServer,
) -> None:
    embeddings_server.fail_first = 10
    embeddings_server.fail_status = 401

    with pytest.raises(EmbeddingError, match="HTTP 401"):
        provider_for(embeddings_server).embed(["abc"])

    assert len(embeddings_server.requests) == 1


def test_openai_provider_times_out(embeddings_server: FakeEmbeddingsServer) -> None:
    embeddings_server.delay = 0.5

    started = time.monotonic()
    with pytest.raises(EmbeddingError):
        provider_for(embeddings_server, timeout=0.1, max_retries=0).embed(["abc"])

    assert time.monotonic() - started < 0.45


def test_openai_provider_reports_an_unreachable_server() -> None:
    provider = OpenAIEmbeddings(
        base_url=f"http://127.0.0.1:{free_port()}", model="m", max_retries=0, timeout=1
    )

    with pytest.raises(EmbeddingError, match="unreachable"):
        provider.embed(["abc"])


def test_hashing_provider_is_deterministic_and_normalised() -> None:
    provider = HashingEmbeddings(32)

    first, second, empty = provider.embed(["Ferns need water", "ferns NEED water", "!!!"])

    assert first == second
    assert first is not None
    assert abs(sum(value * value for value in first) - 1.0) < 1e-9
    assert empty is None


@pytest.mark.django_db
def test_openai_provider_end_to_end_stores_vectors_and_serves_the_vector_leg(
    embeddings_server: FakeEmbeddingsServer, settings: Any
) -> None:
    from workspace import services
    from workspace.models import Chunk
    from workspace.search import workspace_search

    settings.EMBEDDING_PROVIDER = "openai"
    settings.EMBEDDING_BASE_URL = embeddings_server.url
    settings.EMBEDDING_MODEL = "loopback-model"
    settings.EMBEDDING_DIMENSIONS = 8

    services.document_write(user_id="alice", path="a.md", content="Ferns love shade.")
    response = workspace_search(user_id="alice", query="anything at all", mode="vector")

    chunk = Chunk.objects.get()
    assert chunk.embedding_model == "loopback-model-8"
    assert len(chunk.embedding) == 8
    assert response.degraded is False
    assert [(r.path, r.vector_rank) for r in response.results] == [("a.md", 1)]
