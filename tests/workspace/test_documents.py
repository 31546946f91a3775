from __future__ import annotations

import pytest
from django.db import ProgrammingError, transaction
from pytest_django.fixtures import Settings as SettingsWrapper

from tests.workspace.factories import DocumentVersionFactory
from workspace import selectors, services
from workspace.errors import (
    DocumentNotFound,
    DocumentTooLarge,
    InvalidContent,
    PatchFailed,
    VersionNotFound,
)
from workspace.models import Chunk, Document, DocumentVersion, IndexState
from workspace.search import workspace_search

pytestmark = pytest.mark.django_db

LESSON = "engine/knowledge/lessons/one.md"


def test_writing_a_knowledge_document_twice_creates_one_version_and_searchable_chunks() -> None:
    services.document_write(user_id="alice", path=LESSON, content="Always water the ferns.")

    services.document_write(user_id="alice", path=LESSON, content="Always water the orchids.")

    document = Document.objects.get(user_id="alice", path=LESSON)
    versions = list(DocumentVersion.objects.filter(document=document))
    assert [(v.version, v.content, v.changed_by) for v in versions] == [
        (1, "Always water the ferns.", "alice")
    ]
    assert versions[0].content_hash == services.content_hash("Always water the ferns.")
    assert Chunk.objects.filter(document=document).count() >= 1
    assert document.index_state == IndexState.INDEXED
    results = workspace_search(user_id="alice", query="orchids").results
    assert [result.path for result in results] == [LESSON]


def test_identical_content_is_a_no_op() -> None:
    first = services.document_write(user_id="alice", path="a.md", content="same")

    second = services.document_write(user_id="alice", path="a.md", content="same")

    assert second.updated_at == first.updated_at
    assert DocumentVersion.objects.count() == 0


def test_empty_old_content_is_not_versioned() -> None:
    services.document_write(user_id="alice", path="a.md", content="")

    services.document_write(user_id="alice", path="a.md", content="now something")

    assert DocumentVersion.objects.count() == 0


def test_content_equal_to_the_latest_version_is_not_versioned_again() -> None:
    services.document_write(user_id="alice", path="a.md", content="v1")
    services.document_write(user_id="alice", path="a.md", content="v2")
    services.document_restore(user_id="alice", path="a.md", version=1)

    services.document_write(user_id="alice", path="a.md", content="v2")

    contents = list(DocumentVersion.objects.order_by("version").values_list("version", "content"))
    assert contents == [(1, "v1"), (2, "v2"), (3, "v1")]


def test_versions_are_numbered_from_one_per_document() -> None:
    for content in ("a", "b", "c"):
        services.document_write(user_id="alice", path="x.md", content=content)
    for content in ("a", "b"):
        services.document_write(user_id="alice", path="y.md", content=content)

    assert list(
        DocumentVersion.objects.filter(document__path="x.md")
        .order_by("version")
        .values_list("version", "content")
    ) == [(1, "a"), (2, "b")]
    assert list(
        DocumentVersion.objects.filter(document__path="y.md").values_list("version", flat=True)
    ) == [1]


def test_skip_versioning_is_inherited_from_the_nearest_folder_config() -> None:
    services.document_write(
        user_id="alice", path="daily/.config", content="", metadata={"skip_versioning": True}
    )
    services.document_write(
        user_id="alice", path="daily/deep/.config", content="", metadata={"skip_indexing": True}
    )
    for content in ("one", "two", "three"):
        services.document_write(user_id="alice", path="daily/2026-11-28.md", content=content)
        services.document_write(user_id="alice", path="daily/deep/x.md", content=content)

    assert DocumentVersion.objects.filter(document__path="daily/2026-11-28.md").count() == 0
    # Nearest config wins: daily/deep/.config has no skip_versioning, so deep docs are versioned
    # but never indexed.
    deep = Document.objects.get(path="daily/deep/x.md")
    assert DocumentVersion.objects.filter(document=deep).count() == 2
    assert deep.index_state == IndexState.SKIPPED
    assert Chunk.objects.filter(document=deep).count() == 0


def test_document_metadata_overrides_the_folder_config() -> None:
    services.document_write(
        user_id="alice", path="notes/.config", content="", metadata={"skip_indexing": True}
    )

    services.document_write(
        user_id="alice",
        path="notes/keep.md",
        content="searchable words",
        metadata={"skip_indexing": False},
    )

    assert selectors.effective_metadata(
        user_id="alice", path="notes/keep.md", own={"skip_indexing": False}
    ) == {"skip_indexing": False}
    assert Chunk.objects.filter(document__path="notes/keep.md").count() == 1


def test_folder_config_of_another_tenant_does_not_apply() -> None:
    services.document_write(
        user_id="bob", path="notes/.config", content="", metadata={"skip_versioning": True}
    )
    services.document_write(user_id="alice", path="notes/a.md", content="1")

    services.document_write(user_id="alice", path="notes/a.md", content="2")

    assert DocumentVersion.objects.filter(user_id="alice").count() == 1


def test_turning_on_skip_indexing_drops_the_chunks() -> None:
    services.document_write(user_id="alice", path="a.md", content="words here")

    services.document_write(
        user_id="alice", path="a.md", content="words here", metadata={"skip_indexing": True}
    )

    assert Chunk.objects.count() == 0
    assert Document.objects.get(path="a.md").index_state == IndexState.SKIPPED


def test_append_adds_a_line_and_versions_the_previous_content() -> None:
    services.document_append(user_id="alice", path="log.md", content="first")

    document = services.document_append(user_id="alice", path="log.md", content="second")

    assert document.content == "first\nsecond"
    assert list(DocumentVersion.objects.values_list("content", flat=True)) == ["first"]


def test_patch_replaces_the_first_occurrence() -> None:
    services.document_write(user_id="alice", path="a.md", content="🙂 and 🙂")

    result = services.document_patch(user_id="alice", path="a.md", old="🙂", new="🙃")

    assert result.replacements == 1
    assert Document.objects.get(path="a.md").content == "🙃 and 🙂"
    assert DocumentVersion.objects.get().content == "🙂 and 🙂"


def test_patch_replace_all_counts_replacements() -> None:
    services.document_write(user_id="alice", path="a.md", content="x y x y x")

    result = services.document_patch(
        user_id="alice", path="a.md", old="x", new="", replace_all=True
    )

    assert result.replacements == 3
    assert Document.objects.get(path="a.md").content == " y  y "


def test_patch_refuses_missing_text_empty_old_and_missing_documents() -> None:
    services.document_write(user_id="alice", path="a.md", content="abc")

    with pytest.raises(PatchFailed):
        services.document_patch(user_id="alice", path="a.md", old="zzz", new="y")
    with pytest.raises(PatchFailed):
        services.document_patch(user_id="alice", path="a.md", old="", new="y")
    with pytest.raises(DocumentNotFound):
        services.document_patch(user_id="alice", path="nope.md", old="a", new="b")

    assert Document.objects.get(path="a.md").content == "abc"


def test_restore_writes_the_version_back_and_versions_the_current_content() -> None:
    services.document_write(user_id="alice", path="a.md", content="old text")
    services.document_write(user_id="alice", path="a.md", content="new text")

    document = services.document_restore(user_id="alice", path="a.md", version=1)

    assert document.content == "old text"
    assert list(DocumentVersion.objects.order_by("version").values_list("content", flat=True)) == [
        "old text",
        "new text",
    ]


def test_restore_of_an_unknown_version_is_not_found() -> None:
    services.document_write(user_id="alice", path="a.md", content="x")

    with pytest.raises(VersionNotFound):
        services.document_restore(user_id="alice", path="a.md", version=7)


def test_delete_removes_versions_and_chunks() -> None:
    services.document_write(user_id="alice", path="a.md", content="one")
    services.document_write(user_id="alice", path="a.md", content="two")

    services.document_delete(user_id="alice", path="a.md")

    assert Document.objects.count() == 0
    assert DocumentVersion.objects.count() == 0
    assert Chunk.objects.count() == 0


def test_another_tenants_document_is_not_found() -> None:
    services.document_write(user_id="alice", path="a.md", content="secret")

    with pytest.raises(DocumentNotFound):
        selectors.document_get(user_id="bob", path="a.md")
    with pytest.raises(DocumentNotFound):
        services.document_delete(user_id="bob", path="a.md")
    with pytest.raises(DocumentNotFound):
        selectors.document_versions(user_id="bob", path="a.md")


def test_documents_over_the_size_limit_are_refused(settings: SettingsWrapper) -> None:
    settings.WORKSPACE_MAX_DOCUMENT_BYTES = 1024
    services.document_write(user_id="alice", path="a.md", content="x" * 1000)

    with pytest.raises(DocumentTooLarge):
        services.document_write(user_id="alice", path="b.md", content="é" * 513)
    with pytest.raises(DocumentTooLarge):
        services.document_append(user_id="alice", path="a.md", content="y" * 30)

    assert Document.objects.get(path="a.md").content == "x" * 1000


@pytest.mark.parametrize("content", ["nul \x00 inside", "lone \ud800 surrogate"])
def test_content_postgres_cannot_store_is_refused(content: str) -> None:
    with pytest.raises(InvalidContent):
        services.document_write(user_id="alice", path="a.md", content=content)


def test_versions_cannot_be_updated() -> None:
    version = DocumentVersionFactory.create()

    with pytest.raises(ProgrammingError, match="Cannot update"), transaction.atomic():
        DocumentVersion.objects.filter(pk=version.pk).update(content="rewritten history")

    version.refresh_from_db()
    assert version.content != "rewritten history"


def test_list_shows_immediate_children_with_virtual_folders() -> None:
    services.document_write(user_id="alice", path="projects/alpha/plan.md", content="plan")
    services.document_write(user_id="alice", path="projects/readme.md", content="x" * 300)
    services.document_write(user_id="alice", path="projects_other.md", content="other")
    services.document_write(user_id="bob", path="projects/bob.md", content="bob")

    entries = selectors.document_list(user_id="alice", directory="/projects/")

    assert [(e.path, e.is_directory) for e in entries] == [
        ("projects/alpha", True),
        ("projects/readme.md", False),
    ]
    assert entries[0].content_preview is None
    assert entries[1].content_preview == "x" * 200
    root = selectors.document_list(user_id="alice")
    assert [(e.name, e.is_directory) for e in root] == [
        ("projects", True),
        ("projects_other.md", False),
    ]


def test_tree_lists_every_document_below_a_prefix_in_order() -> None:
    for path in ("b/2.md", "a/1.md", "b/1.md", "bb.md"):
        services.document_write(user_id="alice", path=path, content="é")

    tree = selectors.document_tree(user_id="alice", prefix="b")

    assert [(document.path, document.size) for document in tree] == [("b/1.md", 2), ("b/2.md", 2)]


def test_a_document_of_huge_words_is_indexed_without_error() -> None:
    words = " ".join(f"{number:04d}" + "abcdefghij" * 190 for number in range(800))

    document = services.document_write(user_id="alice", path="blob.md", content=words)

    assert document.index_state == IndexState.INDEXED
    assert Chunk.objects.filter(document=document).count() > 1


def test_skip_indexing_stored_as_a_string_is_not_read_as_true() -> None:
    services.document_write(user_id="alice", path="notes/.config", content="")
    # Stored as it is, as metadata written before writes were checked may be.
    Document.objects.filter(path="notes/.config").update(metadata={"skip_indexing": "false"})

    document = services.document_write(user_id="alice", path="notes/a.md", content="ferns")

    assert document.index_state != IndexState.SKIPPED
