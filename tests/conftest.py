from __future__ import annotations

from collections.abc import Callable

import pytest
from rest_framework.test import APIClient

from accounts.services import CreatedApiKey, api_key_create


@pytest.fixture
def make_api_key(db: None) -> Callable[..., CreatedApiKey]:
    def make(
        user_id: str | None = "alice", *, service: bool = False, name: str = "test"
    ) -> CreatedApiKey:
        return api_key_create(name=name, user_id=None if service else user_id, is_service=service)

    return make


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


@pytest.fixture
def tenant_client(make_api_key: Callable[..., CreatedApiKey]) -> Callable[[str], APIClient]:
    """An API client authenticated with a fresh tenant key for ``user_id``."""

    def make(user_id: str) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {make_api_key(user_id).raw_key}")
        return client

    return make
