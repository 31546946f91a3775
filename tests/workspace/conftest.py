from __future__ import annotations

import pytest
from pytest_django.fixtures import Settings as SettingsWrapper


@pytest.fixture(autouse=True)
def _workspace_defaults(settings: SettingsWrapper) -> None:
    """Index inline (so a write is searchable on return) with the offline hashing provider."""
    settings.WORKSPACE_INDEXING = "inline"
    settings.EMBEDDING_PROVIDER = "hashing"
    settings.EMBEDDING_DIMENSIONS = 64
    settings.WORKSPACE_RUNTIME_PATHS = [
        "engine/.runtime/",
        "engine/projects/",
        "engine/orchestrator/failures.json",
        "engine/README.md",
    ]
