"""OpenAPI examples of the main workspace operations.

Copied from real responses (one note written, then read and searched with the hashing
embeddings); ``tests/ironclaw_site/test_openapi.py`` checks each still validates against its
schema and has the keys the live endpoint answers with.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiExample

GARDEN_NOTE = "# Garden\nPlant ferns in the shade by the north wall."

DOCUMENT_WRITE_REQUEST = OpenApiExample(
    "A note with metadata",
    value={"content": GARDEN_NOTE, "metadata": {"tags": ["garden"]}},
    request_only=True,
)
DOCUMENT_RESPONSE = OpenApiExample(
    "A note",
    value={
        "path": "notes/garden.md",
        "content": GARDEN_NOTE,
        "content_hash": "sha256:91b3216d9d72f11bf50bf8f318b66fef422716028a47f4ea3a1539e0c9a4dd39",
        "metadata": {"tags": ["garden"]},
        "is_runtime": False,
        "index_state": "indexed",
        "size": 52,
        "created_at": "2026-11-29T03:35:49.531072Z",
        "updated_at": "2026-11-29T03:35:49.712911Z",
    },
    response_only=True,
    status_codes=["200"],
)
SEARCH_REQUEST = OpenApiExample(
    "A hybrid search",
    value={"query": "ferns shade", "limit": 5},
    request_only=True,
)
SEARCH_RESPONSE = OpenApiExample(
    "One chunk found by both legs",
    value={
        "results": [
            {
                "path": "notes/garden.md",
                "chunk_id": 1,
                "content": GARDEN_NOTE,
                "score": 1.0,
                "fts_rank": 1,
                "vector_rank": 1,
            }
        ],
        "degraded": False,
    },
    response_only=True,
    status_codes=["200"],
)
