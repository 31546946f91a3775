from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from pytest_django.fixtures import Settings as SettingsWrapper

from workspace import services
from workspace.models import Chunk, Document, DocumentVersion, IndexState

pytestmark = pytest.mark.django_db


def test_document_list_hides_runtime_documents_unless_asked(admin_client: Client) -> None:
    services.document_write(user_id="alice", path="notes/a.md", content="héllo")
    services.document_write(user_id="alice", path="engine/.runtime/t.json", content="{}")
    url = reverse("admin:workspace_document_changelist")

    default = admin_client.get(url).content.decode()
    hidden = admin_client.get(url, {"is_runtime__exact": "0"}).content.decode()
    only = admin_client.get(url, {"is_runtime__exact": "1"}).content.decode()
    every = admin_client.get(url, {"is_runtime__exact": "all"}).content.decode()

    assert "notes/a.md" in default
    assert "engine/.runtime/t.json" not in default
    assert '<li class="selected">\n    <a href="?">hidden (default)</a></li>' in default
    assert ("notes/a.md" in hidden, "engine/.runtime/t.json" in hidden) == (True, False)
    assert ("notes/a.md" in only, "engine/.runtime/t.json" in only) == (False, True)
    assert '<td class="field-runtime">runtime</td>' in only
    assert ("notes/a.md" in every, "engine/.runtime/t.json" in every) == (True, True)
    assert "icon-no.svg" not in every


def test_document_list_shows_size_versions_index_state_and_unwrapped_dates(
    admin_client: Client,
) -> None:
    for content in ("one", "two", "three"):
        services.document_write(user_id="alice", path="notes/a.md", content=content)
    services.document_write(user_id="alice", path="notes/b.md", content="héllo")
    updated = Document.objects.get(path="notes/b.md").updated_at
    shown = timezone.localtime(updated).strftime("%Y-%m-%d %H:%M:%S")

    html = admin_client.get(reverse("admin:workspace_document_changelist")).content.decode()

    rows = html.split("<tr>")[2:]
    first, second = (row for row in rows if "field-path" in row)
    assert "notes/a.md" in first
    assert '<td class="field-version_count">2</td>' in first
    assert "notes/b.md" in second
    assert '<td class="field-version_count">0</td>' in second
    assert '<td class="field-size_display">6</td>' in second
    assert '<td class="field-index_state">Indexed</td>' in second
    assert f'<td class="field-updated_at nowrap">{shown}</td>' in second


def test_document_page_diffs_consecutive_versions(admin_client: Client) -> None:
    for content in ("line one\nline two", "line one\nline 2", "line one\nline II"):
        services.document_write(user_id="alice", path="a.md", content=content)
    document = Document.objects.get(path="a.md")

    response = admin_client.get(reverse("admin:workspace_document_change", args=[document.pk]))

    html = response.content.decode()
    assert response.status_code == 200
    assert "-line two" in html
    assert "+line 2" in html
    assert "+line II" in html
    assert "1 chunk(s)" in html


def test_version_page_diffs_against_the_previous_version(admin_client: Client) -> None:
    for content in ("alpha", "beta", "gamma"):
        services.document_write(user_id="alice", path="a.md", content=content)
    second = DocumentVersion.objects.get(version=2)

    response = admin_client.get(reverse("admin:workspace_documentversion_change", args=[second.pk]))

    html = response.content.decode()
    assert response.status_code == 200
    assert "-alpha" in html
    assert "+beta" in html


def test_chunk_search_uses_full_text(admin_client: Client) -> None:
    services.document_write(user_id="alice", path="ferns.md", content="Ferns love shade")
    services.document_write(user_id="alice", path="cacti.md", content="Cacti love sun")

    response = admin_client.get(reverse("admin:workspace_chunk_changelist"), {"q": "fern"})

    html = response.content.decode()
    assert response.status_code == 200
    assert "Ferns love shade" in html
    assert "Cacti love sun" not in html


def test_reindex_action_calls_the_indexer(admin_client: Client) -> None:
    document = services.document_write(user_id="alice", path="a.md", content="words")
    Chunk.objects.all().delete()
    Document.objects.filter(pk=document.pk).update(index_state=IndexState.PENDING)

    response = admin_client.post(
        reverse("admin:workspace_document_changelist"),
        {"action": "reindex", "_selected_action": [str(document.pk)]},
        follow=True,
    )

    assert response.status_code == 200
    assert "Reindexed 1 document(s)" in response.content.decode()
    assert Chunk.objects.filter(document=document).count() == 1
    assert Document.objects.get(pk=document.pk).index_state == IndexState.INDEXED


def test_purge_action_removes_chunks_of_documents_that_became_runtime(
    admin_client: Client, settings: SettingsWrapper
) -> None:
    settings.WORKSPACE_RUNTIME_PATHS = []
    document = services.document_write(user_id="alice", path="engine/.runtime/x", content="a b")
    settings.WORKSPACE_RUNTIME_PATHS = ["engine/.runtime/"]

    admin_client.post(
        reverse("admin:workspace_document_changelist"),
        {"action": "purge_runtime_chunks", "_selected_action": [str(document.pk)]},
    )

    assert Chunk.objects.count() == 0
    assert Document.objects.get(pk=document.pk).is_runtime


@pytest.mark.parametrize(
    "changelist",
    [
        "admin:workspace_document_changelist",
        "admin:workspace_documentversion_changelist",
        "admin:workspace_chunk_changelist",
    ],
)
def test_admin_lists_query_count_does_not_grow_with_rows(
    admin_client: Client, changelist: str
) -> None:
    def queries_for_list() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(reverse(changelist)).status_code == 200
        return len(captured)

    for number in range(2):
        services.document_write(user_id="alice", path=f"a{number}.md", content="one")
        services.document_write(user_id="alice", path=f"a{number}.md", content="two")
    few = queries_for_list()
    for number in range(2, 20):
        services.document_write(user_id="alice", path=f"a{number}.md", content="one")
        services.document_write(user_id="alice", path=f"a{number}.md", content="two")

    assert queries_for_list() == few


def test_document_page_shows_versions_first_and_content_collapsed(admin_client: Client) -> None:
    for content in ("line one\nline two", "line one\nline 2"):
        services.document_write(user_id="alice", path="a.md", content=content)
    document = Document.objects.get(path="a.md")

    html = admin_client.get(
        reverse("admin:workspace_document_change", args=[document.pk])
    ).content.decode()

    assert html.index('class="versions"') < html.index("Content and metadata")
    assert "collapse" in html[html.index("Content and metadata") - 300 :]
    assert 'background: #ffebe9; color: #82071e;">-line two</span>' in html
    assert 'background: #e6ffec; color: #116329;">+line 2</span>' in html


def test_version_page_is_titled_by_path_and_number(admin_client: Client) -> None:
    for content in ("alpha", "beta"):
        services.document_write(user_id="alice", path="notes/a.md", content=content)
    first = DocumentVersion.objects.get(version=1)

    html = admin_client.get(
        reverse("admin:workspace_documentversion_change", args=[first.pk])
    ).content.decode()
    listing = admin_client.get(reverse("admin:workspace_documentversion_changelist"))

    assert "<h1>notes/a.md v1</h1>" in html
    assert "notes/a.md v1" in listing.content.decode()


@pytest.mark.parametrize(
    ("changelist", "model"),
    [
        ("admin:workspace_document_changelist", Document),
        ("admin:workspace_documentversion_changelist", DocumentVersion),
        ("admin:workspace_chunk_changelist", Chunk),
    ],
)
def test_workspace_rows_cannot_be_deleted_from_the_admin(
    admin_client: Client, changelist: str, model: type[Document | DocumentVersion | Chunk]
) -> None:
    services.document_write(user_id="alice", path="a.md", content="one")
    services.document_write(user_id="alice", path="a.md", content="two")
    row = model.objects.first()
    assert row is not None

    listing = admin_client.get(reverse(changelist)).content.decode()
    delete_page = admin_client.get(
        reverse(changelist.replace("changelist", "delete"), args=[row.pk])
    )

    assert "delete_selected" not in listing
    assert delete_page.status_code == 403


def test_chunk_list_filters_by_tenant_runtime_and_embedding(admin_client: Client) -> None:
    services.document_write(user_id="alice", path="ferns.md", content="Ferns love shade")
    services.document_write(user_id="bob", path="cacti.md", content="Cacti love sun")
    Chunk.objects.filter(user_id="bob").update(embedding=None)
    url = reverse("admin:workspace_chunk_changelist")

    by_tenant = admin_client.get(url, {"tenant": "bo", "q": "love"}).content.decode()
    unembedded = admin_client.get(url, {"embedded": "no"}).content.decode()
    runtime = admin_client.get(url, {"document__is_runtime__exact": "1"}).content.decode()

    assert "Cacti love sun" in by_tenant
    assert "Ferns love shade" not in by_tenant
    assert "Cacti love sun" in unembedded
    assert "Ferns love shade" not in unembedded
    assert "Ferns love shade" not in runtime


def test_document_tenant_filter_matches_the_beginning_of_the_id(admin_client: Client) -> None:
    services.document_write(user_id="alice-42", path="a.md", content="one")
    services.document_write(user_id="bob", path="b.md", content="one")

    response = admin_client.get(
        reverse("admin:workspace_document_changelist"), {"tenant": "alice", "q": ".md"}
    )

    html = response.content.decode()
    assert "a.md" in html
    assert "b.md" not in html
    assert '<input type="hidden" name="q" value=".md">' in html
