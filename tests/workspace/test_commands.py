from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from pytest_django.fixtures import Settings as SettingsWrapper

from workspace import services
from workspace.models import Chunk, Document, DocumentVersion, IndexState
from workspace.search import workspace_search

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.fixture
def legacy_runtime_documents(settings: SettingsWrapper) -> None:
    """Engine state written while runtime paths were indexed like documents (the bug of the
    system this one re-creates)."""
    settings.WORKSPACE_RUNTIME_PATHS = []
    for tenant in ("alice", "bob"):
        for number in range(3):
            path = f"engine/.runtime/threads/{number}.json"
            services.document_write(user_id=tenant, path=path, content=f"state one {number}")
            services.document_write(user_id=tenant, path=path, content=f"state two {number}")
    services.document_write(user_id="alice", path="notes/keep.md", content="keep me")
    settings.WORKSPACE_RUNTIME_PATHS = ["engine/.runtime/"]


@pytest.mark.usefixtures("legacy_runtime_documents")
def test_cleanup_runtime_chunks_dry_run_changes_nothing() -> None:
    output = run("cleanup_runtime_chunks", "--dry-run", "--include-versions")

    assert "Found 6 document(s)" in output
    assert "would delete 6 chunk(s), 6 version(s)" in output
    assert Chunk.objects.count() == 7
    assert not Document.objects.filter(is_runtime=True).exists()


@pytest.mark.usefixtures("legacy_runtime_documents")
def test_cleanup_runtime_chunks_purges_in_batches_and_keeps_documents_searchable() -> None:
    output = run("cleanup_runtime_chunks", "--batch-size", "2", "--include-versions")

    assert "Found 6 document(s)" in output
    assert "Deleted 6 chunk(s), 6 version(s)" in output
    assert list(Chunk.objects.values_list("document__path", flat=True)) == ["notes/keep.md"]
    assert DocumentVersion.objects.count() == 0
    assert Document.objects.filter(is_runtime=True).count() == 6
    assert "Found 0 document(s)" in run("cleanup_runtime_chunks")


@pytest.mark.usefixtures("legacy_runtime_documents")
def test_cleanup_runtime_chunks_for_one_tenant() -> None:
    run("cleanup_runtime_chunks", "--user-id", "bob")

    assert Chunk.objects.filter(user_id="bob").count() == 0
    assert Chunk.objects.filter(user_id="alice").count() == 4


def test_cleanup_runtime_chunks_rejects_a_bad_batch_size() -> None:
    with pytest.raises(CommandError, match="--batch-size"):
        run("cleanup_runtime_chunks", "--batch-size", "0")


def test_reindex_workspace_stale_only_reindexes_pending_and_failed() -> None:
    fresh = services.document_write(user_id="alice", path="notes/fresh.md", content="fresh")
    stale = services.document_write(user_id="alice", path="notes/stale.md", content="stale")
    Chunk.objects.filter(document=stale).delete()
    Document.objects.filter(pk=stale.pk).update(index_state=IndexState.FAILED)

    dry = run("reindex_workspace", "--stale-only", "--dry-run")
    output = run("reindex_workspace", "--stale-only", "--path-prefix", "notes")

    assert "Found 1 document(s)" in dry
    assert "Found 1 document(s)" in output
    assert "1 indexed" in output
    assert Document.objects.get(pk=stale.pk).index_state == IndexState.INDEXED
    assert Chunk.objects.filter(document=stale).count() == 1
    assert Document.objects.get(pk=fresh.pk).index_state == IndexState.INDEXED


def test_reindex_workspace_rejects_a_bad_prefix() -> None:
    with pytest.raises(CommandError, match="--path-prefix"):
        run("reindex_workspace", "--path-prefix", "../x")


def test_prune_versions_keeps_the_newest() -> None:
    for number in range(6):
        services.document_write(user_id="alice", path="a.md", content=f"v{number}")
    services.document_write(user_id="alice", path="b.md", content="1")
    services.document_write(user_id="alice", path="b.md", content="2")

    dry = run("prune_versions", "--keep", "2", "--dry-run")
    output = run("prune_versions", "--keep", "2")

    assert "Found 1 document(s)" in dry
    assert "would delete 3 version(s)" in dry
    assert "Deleted 3 version(s)" in output
    assert list(
        DocumentVersion.objects.filter(document__path="a.md")
        .order_by("version")
        .values_list("version", flat=True)
    ) == [4, 5]
    services.document_write(user_id="alice", path="a.md", content="v-next")
    assert DocumentVersion.objects.filter(document__path="a.md").latest("version").version == 6


def test_prune_versions_rejects_keep_zero() -> None:
    with pytest.raises(CommandError, match="--keep"):
        run("prune_versions", "--keep", "0")


def test_workspace_hygiene_deletes_expired_immediate_children() -> None:
    services.document_write(
        user_id="alice",
        path="daily/.config",
        content="",
        metadata={"hygiene": {"enabled": True, "retention_days": 7}},
    )
    for path in ("daily/old.md", "daily/new.md", "daily/sub/old.md", "other/old.md"):
        services.document_write(user_id="alice", path=path, content="x")
    old = timezone.now() - timedelta(days=8)
    Document.objects.filter(path__endswith="old.md").update(updated_at=old)
    Document.objects.filter(path="daily/.config").update(updated_at=old)

    dry = run("workspace_hygiene", "--dry-run")
    output = run("workspace_hygiene")

    assert "1 expired document(s)" in dry
    assert "Deleted 1 document(s)" in output
    assert sorted(Document.objects.values_list("path", flat=True)) == [
        "daily/.config",
        "daily/new.md",
        "daily/sub/old.md",
        "other/old.md",
    ]


def test_workspace_hygiene_spares_configs_and_identity_files_while_deleting_expired_ones() -> None:
    for folder in ("", "projects/ferns/"):
        services.document_write(
            user_id="alice",
            path=f"{folder}.config",
            content="",
            metadata={"hygiene": {"enabled": True, "retention_days": 7}},
        )
        for name in ("AGENTS.md", "SOUL.md", "USER.md", "MEMORY.md", "scratch.md"):
            services.document_write(user_id="alice", path=f"{folder}{name}", content="x")
    # Even an identity file whose own metadata asks for a short retention.
    services.document_write(
        user_id="alice",
        path="MEMORY.md",
        content="y",
        metadata={"hygiene": {"enabled": True, "retention_days": 1}},
    )
    Document.objects.update(updated_at=timezone.now() - timedelta(days=400))

    output = run("workspace_hygiene")

    assert "Deleted 2 document(s)" in output
    assert sorted(Document.objects.values_list("path", flat=True)) == [
        ".config",
        "AGENTS.md",
        "MEMORY.md",
        "SOUL.md",
        "USER.md",
        "projects/ferns/.config",
        "projects/ferns/AGENTS.md",
        "projects/ferns/MEMORY.md",
        "projects/ferns/SOUL.md",
        "projects/ferns/USER.md",
    ]


@pytest.mark.parametrize("retention", [10**9, 10**30, "forever", [1], None])
def test_one_tenants_odd_retention_does_not_stop_hygiene_for_the_others(
    retention: object,
) -> None:
    services.document_write(user_id="alice", path="daily/.config", content="")
    # Stored as it is, as metadata written before writes were checked may be.
    Document.objects.filter(user_id="alice", path="daily/.config").update(
        metadata={"hygiene": {"enabled": True, "retention_days": retention}}
    )
    services.document_write(
        user_id="bob",
        path="daily/.config",
        content="",
        metadata={"hygiene": {"enabled": True, "retention_days": 7}},
    )
    for tenant in ("alice", "bob"):
        services.document_write(user_id=tenant, path="daily/old.md", content="x")
    Document.objects.filter(path="daily/old.md").update(
        updated_at=timezone.now() - timedelta(days=40)
    )

    output = run("workspace_hygiene")

    assert "Found 2 folder(s)" in output
    assert not Document.objects.filter(user_id="bob", path="daily/old.md").exists()
    alice_kept = Document.objects.filter(user_id="alice", path="daily/old.md").exists()
    # An unreadable retention falls back to 30 days; a huge one keeps everything.
    assert alice_kept is isinstance(retention, int)


def test_cleanup_runtime_chunks_indexes_documents_that_are_no_longer_runtime(
    settings: SettingsWrapper,
) -> None:
    services.document_write(user_id="alice", path="engine/.runtime/notes.md", content="ferns")
    settings.WORKSPACE_RUNTIME_PATHS = []

    output = run("cleanup_runtime_chunks")

    document = Document.objects.get(path="engine/.runtime/notes.md")
    assert "1 no longer runtime" in output
    assert not document.is_runtime
    assert document.index_state == IndexState.INDEXED
    assert [
        r.path for r in workspace_search(user_id="alice", query="ferns", mode="fts").results
    ] == ["engine/.runtime/notes.md"]


def test_a_documents_own_hygiene_overrides_its_folders() -> None:
    services.document_write(
        user_id="alice",
        path="daily/.config",
        content="",
        metadata={"hygiene": {"enabled": True, "retention_days": 7}},
    )
    services.document_write(
        user_id="alice", path="daily/keep.md", content="x", metadata={"hygiene": {"enabled": False}}
    )
    services.document_write(
        user_id="alice",
        path="daily/longer.md",
        content="x",
        metadata={"hygiene": {"enabled": True, "retention_days": 60}},
    )
    services.document_write(
        user_id="alice",
        path="daily/shorter.md",
        content="x",
        metadata={"hygiene": {"enabled": True, "retention_days": 2}},
    )
    services.document_write(user_id="alice", path="daily/plain.md", content="x")
    Document.objects.exclude(path="daily/shorter.md").update(
        updated_at=timezone.now() - timedelta(days=30)
    )
    Document.objects.filter(path="daily/shorter.md").update(
        updated_at=timezone.now() - timedelta(days=3)
    )

    output = run("workspace_hygiene")

    assert "Deleted 2 document(s)" in output
    assert sorted(Document.objects.values_list("path", flat=True)) == [
        "daily/.config",
        "daily/keep.md",
        "daily/longer.md",
    ]
