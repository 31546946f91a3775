from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.conf import settings


def load_settings(**env: str) -> subprocess.CompletedProcess[str]:
    """Import the settings module in a fresh interpreter with ``env`` (no database needed)."""
    full_env = {
        **os.environ,
        "DATABASE_URL": "postgresql://nobody@localhost:1/none",
        "DJANGO_SETTINGS_MODULE": "ironclaw_site.settings",
        **env,
    }
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import ironclaw_site.settings as s; "
            "print(s.WORKSPACE_RUNTIME_PATHS, s.EMBEDDING_PROVIDER, s.DATA_UPLOAD_MAX_MEMORY_SIZE)",
        ],
        cwd=settings.BASE_DIR,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("WORKSPACE_CHUNK_WORDS", "lots"),
        ("WORKSPACE_CHUNK_OVERLAP", "0.9"),
        ("WORKSPACE_CHUNK_MIN_WORDS", "900"),
        ("WORKSPACE_INDEXING", "sometimes"),
        ("INDEXING_PENDING_REQUEUE_SECONDS", "0"),
        ("WORKSPACE_LOCK_TIMEOUT_MS", "0"),
        ("WORKSPACE_RUNTIME_PATHS", "engine/../x/"),
        ("WORKSPACE_MAX_DOCUMENT_BYTES", "-1"),
        ("EMBEDDING_PROVIDER", "magic"),
        ("EMBEDDING_BASE_URL", "ftp://example.com"),
        ("EMBEDDING_DIMENSIONS", "zero"),
        ("EMBEDDING_TIMEOUT", "nan"),
        ("SEARCH_RRF_K", "0"),
        ("SEARCH_CANDIDATES", "many"),
        ("SEARCH_FUSION", "average"),
        ("SEARCH_FTS_WEIGHT", "-1"),
    ],
)
def test_bad_workspace_settings_fail_at_start_up_naming_the_variable(
    variable: str, value: str
) -> None:
    result = load_settings(**{variable: value})

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert variable in result.stderr


def test_weighted_fusion_needs_a_nonzero_weight() -> None:
    result = load_settings(
        SEARCH_FUSION="weighted", SEARCH_FTS_WEIGHT="0", SEARCH_VECTOR_WEIGHT="0"
    )

    assert result.returncode != 0
    assert "SEARCH_FTS_WEIGHT" in result.stderr


def test_empty_runtime_paths_setting_means_none_and_defaults_are_sane() -> None:
    result = load_settings(WORKSPACE_RUNTIME_PATHS="")
    default = load_settings()

    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "[]"
    assert "'engine/.runtime/'" in default.stdout
    assert " hashing " in default.stdout
    # Django's own body check must not fire before the workspace's 413 for a 5 MiB document.
    assert int(default.stdout.split()[-1]) > 2 * 5 * 1024 * 1024
