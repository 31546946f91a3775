"""Embedding providers: ``none`` (full-text only), ``hashing`` (offline) and ``openai``.

Providers are called outside any transaction (they may be slow or remote). ``embed`` returns one
vector per text, or ``None`` for a text that has nothing to embed; failures raise
``EmbeddingError`` so callers can fall back (chunks without vectors, full-text-only search).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Protocol

from django.conf import settings

logger = logging.getLogger(__name__)

HASHING_DEFAULT_DIMENSIONS = 256
_TOKEN = re.compile(r"\w+", re.UNICODE)
_RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class EmbeddingError(Exception):
    pass


class EmbeddingProvider(Protocol):
    # Stored with each chunk; search compares only vectors of the current model.
    name: str
    dimensions: int | None

    def embed(self, texts: Sequence[str]) -> list[list[float] | None]: ...


class NoEmbeddings:
    name = ""
    dimensions: int | None = None

    def embed(self, texts: Sequence[str]) -> list[list[float] | None]:
        return [None for _ in texts]


class HashingEmbeddings:
    """Signed feature hashing of lower-cased word tokens, L2-normalised: lexical, deterministic."""

    def __init__(self, dimensions: int = HASHING_DEFAULT_DIMENSIONS):
        self.dimensions: int | None = dimensions
        self.size = dimensions
        self.name = f"hashing-{dimensions}"

    def embed_one(self, text: str) -> list[float] | None:
        vector = [0.0] * self.size
        for token in _TOKEN.findall(text.lower()):
            digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
            bucket = int.from_bytes(digest[:4], "little") % self.size
            vector[bucket] += 1.0 if digest[4] & 1 else -1.0
        norm = math.sqrt(sum(value * value for value in vector))
        if norm == 0:
            # A zero vector has no cosine distance to anything: store no vector at all.
            return None
        return [value / norm for value in vector]

    def embed(self, texts: Sequence[str]) -> list[list[float] | None]:
        return [self.embed_one(text) for text in texts]


class OpenAIEmbeddings:
    """Any OpenAI-compatible ``POST {base}/embeddings`` endpoint (OpenAI, Ollama, vLLM, ...)."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        dimensions: int | None = None,
        timeout: float = 30.0,
        batch_size: int = 64,
        max_retries: int = 3,
        backoff_seconds: float = 0.5,
    ):
        base = base_url.rstrip("/")
        self.url = f"{base}/embeddings" if base.endswith("/v1") else f"{base}/v1/embeddings"
        self.model = model
        self.api_key = api_key
        self.dimensions = dimensions
        self.name = f"{model}-{dimensions}" if dimensions else model
        self.timeout = timeout
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds

    def embed(self, texts: Sequence[str]) -> list[list[float] | None]:
        vectors: list[list[float] | None] = []
        for start in range(0, len(texts), self.batch_size):
            vectors.extend(self._embed_batch(list(texts[start : start + self.batch_size])))
        return vectors

    def _embed_batch(self, batch: list[str]) -> list[list[float] | None]:
        payload: dict[str, object] = {"model": self.model, "input": batch}
        if self.dimensions:
            payload["dimensions"] = self.dimensions
        body = self._post_with_retries(json.dumps(payload).encode("utf-8"))
        try:
            items = sorted(body["data"], key=lambda item: item["index"])
            vectors = [[float(value) for value in item["embedding"]] for item in items]
        except (KeyError, TypeError, ValueError) as error:
            raise EmbeddingError(f"malformed embeddings response: {error!r}") from None
        if len(vectors) != len(batch):
            raise EmbeddingError(f"asked for {len(batch)} embeddings, got {len(vectors)}")
        return list(vectors)

    def _post_with_retries(self, data: bytes) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        attempt = 0
        while True:
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    parsed = json.loads(response.read())
                if not isinstance(parsed, dict):
                    raise EmbeddingError("embeddings response is not a JSON object")
                return parsed
            except urllib.error.HTTPError as error:
                retryable = error.code in _RETRYABLE_STATUS
                problem = f"HTTP {error.code} from {self.url}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                retryable = True
                problem = f"{self.url} unreachable: {error}"
            except ValueError as error:
                raise EmbeddingError(f"embeddings response is not JSON: {error}") from None
            if not retryable or attempt >= self.max_retries:
                raise EmbeddingError(problem)
            delay = self.backoff_seconds * (2**attempt)
            logger.warning("embedding request failed (%s); retrying in %.2fs", problem, delay)
            time.sleep(delay)
            attempt += 1


def embedding_provider() -> EmbeddingProvider:
    """The provider the settings select (built per call: cheap, and follows setting overrides)."""
    provider = settings.EMBEDDING_PROVIDER
    if provider == "none":
        return NoEmbeddings()
    if provider == "hashing":
        return HashingEmbeddings(settings.EMBEDDING_DIMENSIONS or HASHING_DEFAULT_DIMENSIONS)
    return OpenAIEmbeddings(
        base_url=settings.EMBEDDING_BASE_URL,
        model=settings.EMBEDDING_MODEL,
        api_key=settings.EMBEDDING_API_KEY,
        dimensions=settings.EMBEDDING_DIMENSIONS,
        timeout=settings.EMBEDDING_TIMEOUT,
        batch_size=settings.EMBEDDING_BATCH_SIZE,
        max_retries=settings.EMBEDDING_MAX_RETRIES,
    )
