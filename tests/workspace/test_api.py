from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from django.test import Client
from pytest_django import DjangoAssertNumQueries
from pytest_django.fixtures import Settings as SettingsWrapper
from rest_framework.test import APIClient

from workspace import services
from workspace.models import Chunk, Document, DocumentVersion

pytestmark = pytest.mark.django_db

TenantClient = Callable[[str], APIClient]
DOCS = "/api/v1/workspace/documents"


@pytest.fixture
def alice(tenant_client: TenantClient) -> APIClient:
    return tenant_client("alice")


def test_put_then_get_a_document_with_slashes_in_its_path(alice: APIClient) -> None:
    put = alice.put(
        f"{DOCS}/notes/2026/plan.md",
        {"content": "  Plan: ferns.\n", "metadata": {"tag": "x"}},
        format="json",
    )

    got = alice.get(f"{DOCS}/notes/2026/plan.md")

    assert put.status_code == 200
    assert got.status_code == 200
    body = got.json()
    assert body["path"] == "notes/2026/plan.md"
    assert body["content"] == "  Plan: ferns.\n"
    assert body["metadata"] == {"tag": "x"}
    assert body["content_hash"].startswith("sha256:")
    assert body["is_runtime"] is False
    assert body["index_state"] == "indexed"
    assert "updated_at" in body


def test_runtime_path_put_reports_runtime(alice: APIClient) -> None:
    response = alice.put(f"{DOCS}/engine/.runtime/t.json", {"content": "{}"}, format="json")

    assert response.status_code == 200
    assert response.json()["is_runtime"] is True
    assert response.json()["index_state"] == "skipped"


def test_another_tenants_document_is_a_404(alice: APIClient, tenant_client: TenantClient) -> None:
    alice.put(f"{DOCS}/secret.md", {"content": "mine"}, format="json")
    bob = tenant_client("bob")

    responses = [
        bob.get(f"{DOCS}/secret.md"),
        bob.delete(f"{DOCS}/secret.md"),
        bob.get(f"{DOCS}/secret.md/versions"),
        bob.get(f"{DOCS}/secret.md/versions/1"),
        bob.post(f"{DOCS}/secret.md/patch", {"old": "mine", "new": "bob"}, format="json"),
    ]

    assert [response.status_code for response in responses] == [404] * 5
    assert responses[0].json()["error"]["code"] == "document_not_found"
    assert Document.objects.get(path="secret.md").content == "mine"


def test_delete_returns_204_and_removes_the_document(alice: APIClient) -> None:
    alice.put(f"{DOCS}/a.md", {"content": "x"}, format="json")

    response = alice.delete(f"{DOCS}/a.md")

    assert response.status_code == 204
    assert alice.get(f"{DOCS}/a.md").status_code == 404


@pytest.mark.parametrize(
    "path", ["a/../b.md", "~/x.md", "D:/x.md", "a%5Cb.md", "a%00b.md", "x" * 1100]
)
def test_invalid_paths_are_400_naming_the_path(alice: APIClient, path: str) -> None:
    response = alice.put(f"{DOCS}/{path}", {"content": "x"}, format="json")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_path"
    assert "path" in response.json()["error"]["details"]


def test_missing_content_is_400_naming_the_field(alice: APIClient) -> None:
    response = alice.put(f"{DOCS}/a.md", {"metadata": {}}, format="json")

    assert response.status_code == 400
    assert "content" in response.json()["error"]["details"]


@pytest.mark.parametrize(
    ("url", "method", "body", "field"),
    [
        ("a.md", "put", {"content": 5}, "content"),
        ("a.md", "put", {"content": True}, "content"),
        ("a.md/append", "post", {"content": 5}, "content"),
        ("a.md/patch", "post", {"old": 1, "new": "x"}, "old"),
        ("a.md/patch", "post", {"old": "one", "new": False}, "new"),
    ],
)
def test_a_number_or_boolean_as_text_is_400_naming_the_field(
    alice: APIClient, url: str, method: str, body: dict[str, object], field: str
) -> None:
    alice.put(f"{DOCS}/a.md", {"content": "one"}, format="json")

    response = getattr(alice, method)(f"{DOCS}/{url}", body, format="json")

    assert response.status_code == 400
    assert field in response.json()["error"]["details"]
    assert list(Document.objects.values_list("content", flat=True)) == ["one"]


def test_a_search_query_that_is_a_number_is_400_naming_the_query(alice: APIClient) -> None:
    response = alice.post("/api/v1/workspace/search", {"query": 42}, format="json")

    assert response.status_code == 400
    assert "query" in response.json()["error"]["details"]


@pytest.mark.parametrize("replace_all", ["yes", "true", 1, None])
def test_replace_all_that_is_not_a_json_boolean_is_400(
    alice: APIClient, replace_all: object
) -> None:
    alice.put(f"{DOCS}/a.md", {"content": "o o"}, format="json")

    response = alice.post(
        f"{DOCS}/a.md/patch", {"old": "o", "new": "0", "replace_all": replace_all}, format="json"
    )

    assert response.status_code == 400
    assert "replace_all" in response.json()["error"]["details"]
    assert Document.objects.get().content == "o o"


def test_metadata_must_be_an_object(alice: APIClient) -> None:
    response = alice.put(f"{DOCS}/a.md", {"content": "x", "metadata": [1]}, format="json")

    assert response.status_code == 400
    assert "metadata" in response.json()["error"]["details"]


def test_nul_in_metadata_is_400(alice: APIClient) -> None:
    response = alice.put(
        f"{DOCS}/a.md", {"content": "x", "metadata": {"k": "a\u0000b"}}, format="json"
    )

    assert response.status_code == 400


def test_document_over_the_size_limit_is_413(alice: APIClient, settings: SettingsWrapper) -> None:
    settings.WORKSPACE_MAX_DOCUMENT_BYTES = 2048

    response = alice.put(f"{DOCS}/a.md", {"content": "x" * 2049}, format="json")

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "document_too_large"
    assert not Document.objects.exists()


def test_request_body_over_the_limit_is_413_not_500(
    alice: APIClient, settings: SettingsWrapper
) -> None:
    settings.WORKSPACE_MAX_REQUEST_BYTES = 4096

    response = alice.put(f"{DOCS}/a.md", {"content": "x" * 10_000}, format="json")

    assert response.status_code == 413


def test_default_limits_accept_a_five_mib_document(alice: APIClient) -> None:
    content = "word " * (5 * 1024 * 1024 // 5)

    response = alice.put(f"{DOCS}/engine/.runtime/big.json", {"content": content}, format="json")
    too_big = alice.put(
        f"{DOCS}/engine/.runtime/big.json", {"content": content + "x"}, format="json"
    )

    assert response.status_code == 200
    assert too_big.status_code == 413


def test_append_and_patch(alice: APIClient) -> None:
    alice.post(f"{DOCS}/log.md/append", {"content": "one"}, format="json")
    appended = alice.post(f"{DOCS}/log.md/append", {"content": "two"}, format="json")

    patched = alice.post(
        f"{DOCS}/log.md/patch", {"old": "o", "new": "0", "replace_all": True}, format="json"
    )

    assert appended.json()["content"] == "one\ntwo"
    assert patched.status_code == 200
    assert patched.json()["content"] == "0ne\ntw0"
    assert patched.json()["replacements"] == 2


def test_patch_without_old_is_400_naming_the_field(alice: APIClient) -> None:
    alice.put(f"{DOCS}/a.md", {"content": "x"}, format="json")

    response = alice.post(f"{DOCS}/a.md/patch", {"old": "", "new": "y"}, format="json")
    missing = alice.post(f"{DOCS}/a.md/patch", {"old": "zzz", "new": "y"}, format="json")

    assert response.status_code == 400
    assert "old" in response.json()["error"]["details"]
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "patch_failed"


def test_versions_list_detail_and_restore(alice: APIClient) -> None:
    for content in ("v1", "v2", "v3"):
        alice.put(f"{DOCS}/a.md", {"content": content}, format="json")

    listed = alice.get(f"{DOCS}/a.md/versions")
    detail = alice.get(f"{DOCS}/a.md/versions/1")
    restored = alice.post(f"{DOCS}/a.md/versions/1/restore")
    unknown = alice.get(f"{DOCS}/a.md/versions/99")

    assert listed.status_code == 200
    assert [v["version"] for v in listed.json()["results"]] == [2, 1]
    assert set(listed.json()["results"][0]) >= {
        "version",
        "content_hash",
        "created_at",
        "changed_by",
    }
    assert detail.json()["content"] == "v1"
    assert detail.json()["changed_by"] == "alice"
    assert restored.json()["content"] == "v1"
    assert DocumentVersion.objects.count() == 3
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "version_not_found"


def test_restore_of_a_version_that_is_not_a_number_is_the_documented_405(
    alice: APIClient, client: Client
) -> None:
    alice.put(f"{DOCS}/a.md", {"content": "v1"}, format="json")
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()

    response = alice.post(f"{DOCS}/a.md/versions/first/restore")

    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    restore = schema["paths"]["/api/v1/workspace/documents/{path}/versions/{version}/restore"]
    assert "405" in restore["post"]["responses"]


def test_a_document_named_like_an_action_stays_readable(alice: APIClient) -> None:
    alice.put(f"{DOCS}/notes/append", {"content": "not an action"}, format="json")

    response = alice.get(f"{DOCS}/notes/append")

    assert response.status_code == 200
    assert response.json()["path"] == "notes/append"
    assert alice.delete(f"{DOCS}/notes/append").status_code == 204


def test_list_and_tree(alice: APIClient) -> None:
    for path in ("p/a.md", "p/q/b.md", "z.md"):
        alice.put(f"{DOCS}/{path}", {"content": "hello"}, format="json")

    listed = alice.get("/api/v1/workspace/list", {"path": "p"})
    tree = alice.get("/api/v1/workspace/tree")

    assert [(e["path"], e["is_directory"]) for e in listed.json()["results"]] == [
        ("p/a.md", False),
        ("p/q", True),
    ]
    assert listed.json()["results"][0]["content_preview"] == "hello"
    assert [d["path"] for d in tree.json()["results"]] == ["p/a.md", "p/q/b.md", "z.md"]
    assert tree.json()["results"][0]["size"] == 5


def test_list_rejects_a_bad_folder(alice: APIClient) -> None:
    response = alice.get("/api/v1/workspace/list", {"path": "../x"})

    assert response.status_code == 400


def test_search_finds_a_written_document_and_excludes_runtime_state(alice: APIClient) -> None:
    alice.put(
        f"{DOCS}/engine/knowledge/lessons/one.md", {"content": "Ferns need shade."}, format="json"
    )
    alice.put(f"{DOCS}/engine/.runtime/t.json", {"content": "ferns ferns"}, format="json")

    response = alice.post("/api/v1/workspace/search", {"query": "ferns"}, format="json")

    assert response.status_code == 200
    body = response.json()
    assert body["degraded"] is False
    assert [r["path"] for r in body["results"]] == ["engine/knowledge/lessons/one.md"]
    assert set(body["results"][0]) == {
        "path",
        "chunk_id",
        "content",
        "score",
        "fts_rank",
        "vector_rank",
    }


def test_search_with_punctuation_is_200(alice: APIClient) -> None:
    response = alice.post(
        "/api/v1/workspace/search", {"query": '"foo" AND (bar -baz'}, format="json"
    )

    assert response.status_code == 200
    assert response.json() == {"results": [], "degraded": False}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "query"),
        ({"query": ""}, "query"),
        ({"query": "x", "limit": 0}, "limit"),
        ({"query": "x", "limit": 10_000}, "limit"),
        ({"query": "x", "mode": "magic"}, "mode"),
        ({"query": "a\u0000b"}, "query"),
    ],
)
def test_search_validation_is_400_naming_the_field(
    alice: APIClient, body: dict[str, object], field: str
) -> None:
    response = alice.post("/api/v1/workspace/search", body, format="json")

    assert response.status_code == 400
    assert field in response.json()["error"]["details"]


def test_malformed_json_is_400(alice: APIClient) -> None:
    response = alice.generic(
        "PUT", f"{DOCS}/a.md", data="{not json", content_type="application/json"
    )

    assert response.status_code == 400


def test_workspace_requires_a_key(api_client: APIClient) -> None:
    assert api_client.get(f"{DOCS}/a.md").status_code == 401


def test_openapi_schema_documents_every_workspace_endpoint(client: Client) -> None:
    schema = json.loads(client.get("/api/schema/", HTTP_ACCEPT="application/json").content)

    paths = schema["paths"]
    for expected in [
        "/api/v1/workspace/documents/{path}",
        "/api/v1/workspace/documents/{path}/append",
        "/api/v1/workspace/documents/{path}/patch",
        "/api/v1/workspace/documents/{path}/versions",
        "/api/v1/workspace/documents/{path}/versions/{version}",
        "/api/v1/workspace/documents/{path}/versions/{version}/restore",
        "/api/v1/workspace/list",
        "/api/v1/workspace/tree",
        "/api/v1/workspace/search",
    ]:
        assert expected in paths
    assert set(paths["/api/v1/workspace/documents/{path}"]) >= {"get", "put", "delete"}


def test_chunks_follow_the_api_write(alice: APIClient) -> None:
    alice.put(f"{DOCS}/a.md", {"content": "alpha beta"}, format="json")

    assert Chunk.objects.filter(document__path="a.md").count() == 1


def test_absurd_version_numbers_are_404_not_500(alice: APIClient) -> None:
    alice.put(f"{DOCS}/a.md", {"content": "x"}, format="json")

    detail = alice.get(f"{DOCS}/a.md/versions/{'9' * 40}")
    restore = alice.post(f"{DOCS}/a.md/versions/{'9' * 40}/restore")

    assert detail.status_code == 404
    assert restore.status_code == 404


@pytest.mark.parametrize(
    "url",
    [
        f"{DOCS}/a.md",
        f"{DOCS}/a.md/append",
        f"{DOCS}/a.md/patch",
        f"{DOCS}/a.md/versions",
        f"{DOCS}/a.md/versions/1",
        f"{DOCS}/a.md/versions/1/restore",
        "/api/v1/workspace/list",
        "/api/v1/workspace/tree",
        "/api/v1/workspace/search",
    ],
)
def test_options_on_every_workspace_endpoint_is_200_not_500(alice: APIClient, url: str) -> None:
    response = alice.options(url)

    assert response.status_code == 200
    assert "application/json" in response.json()["renders"]


@pytest.mark.parametrize(
    "url",
    ["/api/v1/workspace/list", "/api/v1/workspace/tree", f"{DOCS}/a.md/versions"],
)
@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"limit": "9" * 21}, "limit"),
        ({"limit": "0"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"offset": "-5"}, "offset"),
        ({"offset": "9" * 30}, "offset"),
        ({"offset": "x"}, "offset"),
    ],
)
def test_bad_page_parameters_are_400_naming_the_parameter(
    alice: APIClient, url: str, query: dict[str, str], field: str
) -> None:
    alice.put(f"{DOCS}/a.md", {"content": "one"}, format="json")
    alice.put(f"{DOCS}/a.md", {"content": "two"}, format="json")

    response = alice.get(url, query)

    assert response.status_code == 400
    assert field in response.json()["error"]["details"]


def test_page_parameters_in_range_page_through_the_tree(alice: APIClient) -> None:
    for name in ("a", "b", "c"):
        alice.put(f"{DOCS}/{name}.md", {"content": name}, format="json")

    first = alice.get("/api/v1/workspace/tree", {"limit": 2})
    rest = alice.get("/api/v1/workspace/tree", {"limit": 1000, "offset": 2})

    assert [entry["path"] for entry in first.json()["results"]] == ["a.md", "b.md"]
    assert first.json()["count"] == 3
    assert [entry["path"] for entry in rest.json()["results"]] == ["c.md"]


def test_openapi_schema_documents_the_paginated_workspace_lists(client: Client) -> None:
    schema = json.loads(client.get("/api/schema/", HTTP_ACCEPT="application/json").content)

    for path in [
        "/api/v1/workspace/list",
        "/api/v1/workspace/tree",
        "/api/v1/workspace/documents/{path}/versions",
    ]:
        operation = schema["paths"][path]["get"]
        reference = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        component = schema["components"]["schemas"][reference.rsplit("/", 1)[1]]
        limit = next(p for p in operation["parameters"] if p["name"] == "limit")
        assert set(component["properties"]) >= {"count", "next", "previous", "results"}
        assert limit["schema"]["maximum"] == 1000


def test_another_tenants_path_is_404_on_every_document_endpoint(
    alice: APIClient, tenant_client: TenantClient
) -> None:
    for content in ("one", "two"):
        alice.put(f"{DOCS}/engine/knowledge/k.md", {"content": content}, format="json")
        alice.put(f"{DOCS}/engine/.runtime/t.json", {"content": content}, format="json")
    bob = tenant_client("bob")

    statuses = {
        (path, action): response.status_code
        for path in ("engine/knowledge/k.md", "engine/.runtime/t.json")
        for action, response in [
            ("read", bob.get(f"{DOCS}/{path}")),
            ("versions", bob.get(f"{DOCS}/{path}/versions")),
            ("version", bob.get(f"{DOCS}/{path}/versions/1")),
            ("restore", bob.post(f"{DOCS}/{path}/versions/1/restore")),
            ("patch", bob.post(f"{DOCS}/{path}/patch", {"old": "two", "new": "x"}, format="json")),
            ("delete", bob.delete(f"{DOCS}/{path}")),
        ]
    }

    assert set(statuses.values()) == {404}
    assert sorted(Document.objects.values_list("user_id", "path", "content")) == [
        ("alice", "engine/.runtime/t.json", "two"),
        ("alice", "engine/knowledge/k.md", "two"),
    ]
    assert DocumentVersion.objects.filter(user_id="alice").count() == 1


def test_append_to_another_tenants_path_writes_only_in_the_callers_workspace(
    alice: APIClient, tenant_client: TenantClient
) -> None:
    alice.put(f"{DOCS}/log.md", {"content": "alice"}, format="json")

    response = tenant_client("bob").post(f"{DOCS}/log.md/append", {"content": "bob"}, format="json")

    assert response.json()["content"] == "bob"
    assert Document.objects.get(user_id="alice", path="log.md").content == "alice"


def test_list_tree_and_search_never_show_another_tenants_documents(
    alice: APIClient, tenant_client: TenantClient
) -> None:
    bob = tenant_client("bob")
    bob.put(f"{DOCS}/shared/ferns.md", {"content": "ferns ferns"}, format="json")
    bob.put(f"{DOCS}/top.md", {"content": "ferns"}, format="json")
    alice.put(f"{DOCS}/shared/mine.md", {"content": "moss"}, format="json")

    root = alice.get("/api/v1/workspace/list")
    folder = alice.get("/api/v1/workspace/list", {"path": "shared"})
    tree = alice.get("/api/v1/workspace/tree")
    search = alice.post("/api/v1/workspace/search", {"query": "ferns"}, format="json")

    assert [entry["path"] for entry in root.json()["results"]] == ["shared"]
    assert [entry["path"] for entry in folder.json()["results"]] == ["shared/mine.md"]
    assert [entry["path"] for entry in tree.json()["results"]] == ["shared/mine.md"]
    # The vector leg ranks every chunk of the tenant; none of them may be bob's.
    assert [result["path"] for result in search.json()["results"]] == ["shared/mine.md"]


@pytest.mark.parametrize(
    "url", ["/api/v1/workspace/list", "/api/v1/workspace/tree", f"{DOCS}/a.md/versions"]
)
def test_workspace_lists_take_the_same_queries_for_many_rows(
    alice: APIClient, url: str, django_assert_max_num_queries: DjangoAssertNumQueries
) -> None:
    # Authentication (key lookup) + the rate limit + the selector's lookup + count + page.
    budget = 5
    for number in range(30):
        services.document_write(user_id="alice", path=f"f{number}/d.md", content="x")
        services.document_write(user_id="alice", path=f"d{number}.md", content="x")
        services.document_write(user_id="alice", path="a.md", content=f"v{number}")
    alice.get(url)  # the key's first use is recorded; the next minute's are not

    with django_assert_max_num_queries(budget):
        response = alice.get(url, {"limit": 1000})

    assert response.status_code == 200
    assert len(response.json()["results"]) >= 29


def test_version_detail_does_not_load_the_current_content(
    alice: APIClient, django_assert_max_num_queries: DjangoAssertNumQueries
) -> None:
    alice.put(f"{DOCS}/a.md", {"content": "old"}, format="json")
    alice.put(f"{DOCS}/a.md", {"content": "current " * 1000}, format="json")

    with django_assert_max_num_queries(3) as queries:  # key lookup, rate limit, the version
        response = alice.get(f"{DOCS}/a.md/versions/1")

    assert response.json()["content"] == "old"
    assert not any('"workspace_document"."content"' in query["sql"] for query in queries)


@pytest.mark.parametrize(
    "path", ["notes/versions/007", "notes/versions/01/restore", "notes/append", "a%2Fb/patch"]
)
def test_a_document_named_like_an_action_keeps_its_exact_path(alice: APIClient, path: str) -> None:
    expected = path.replace("%2F", "/")

    written = alice.put(f"{DOCS}/{path}", {"content": "x"}, format="json")
    stored = list(Document.objects.values_list("path", flat=True))
    deleted = alice.delete(f"{DOCS}/{path}")

    assert written.json()["path"] == expected
    assert stored == [expected]
    assert deleted.status_code == 204
    assert not Document.objects.exists()


def test_openapi_schema_documents_the_workspace_error_responses(client: Client) -> None:
    schema = json.loads(client.get("/api/schema/", HTTP_ACCEPT="application/json").content)

    paths = schema["paths"]
    write = paths["/api/v1/workspace/documents/{path}"]["put"]["responses"]
    restore = paths["/api/v1/workspace/documents/{path}/versions/{version}/restore"]["post"]
    error = write["413"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert set(write) >= {"200", "400", "409", "413"}
    assert set(restore["responses"]) >= {"200", "400", "404", "409", "413"}
    assert schema["components"]["schemas"][error]["required"] == ["error"]


@pytest.mark.parametrize(
    ("metadata", "key"),
    [
        ({"skip_indexing": "false"}, "skip_indexing"),
        ({"skip_versioning": 1}, "skip_versioning"),
        ({"hygiene": "on"}, "hygiene"),
        ({"hygiene": {"enabled": "yes"}}, "hygiene"),
        ({"hygiene": {"enabled": True, "retention_days": 0}}, "hygiene"),
        ({"hygiene": {"enabled": True, "retention_days": True}}, "hygiene"),
        ({"hygiene": {"enabled": True, "retention_days": "30"}}, "hygiene"),
    ],
)
def test_known_metadata_of_the_wrong_type_is_a_400_naming_it(
    alice: APIClient, metadata: dict[str, object], key: str
) -> None:
    response = alice.put(
        f"{DOCS}/notes/.config", {"content": "", "metadata": metadata}, format="json"
    )

    assert response.status_code == 400
    assert key in response.json()["error"]["details"]["metadata"]
    assert not Document.objects.exists()


def test_known_metadata_of_the_right_type_and_unknown_keys_are_stored(alice: APIClient) -> None:
    metadata = {
        "skip_indexing": False,
        "skip_versioning": True,
        "hygiene": {"enabled": True, "retention_days": 7},
        "owner": "ops",
    }

    response = alice.put(
        f"{DOCS}/notes/.config", {"content": "", "metadata": metadata}, format="json"
    )

    assert response.status_code == 200
    assert Document.objects.get().metadata == metadata


@pytest.mark.parametrize("path", ["%0Anotes.md", "notes.md%0A", "notes/%0D%0Aa.md"])
def test_path_with_a_newline_anywhere_is_a_400_naming_path(alice: APIClient, path: str) -> None:
    read = alice.get(f"{DOCS}/{path}")
    written = alice.put(f"{DOCS}/{path}", {"content": "x"}, format="json")

    for response in (read, written):
        assert response.status_code == 400
        assert "path" in response.json()["error"]["details"]
    assert not Document.objects.exists()


def test_content_and_replace_all_of_the_wrong_type_are_400(alice: APIClient) -> None:
    number = alice.put(f"{DOCS}/a.md", {"content": 0}, format="json")
    alice.put(f"{DOCS}/b.md", {"content": "one one"}, format="json")
    loose = alice.post(
        f"{DOCS}/b.md/patch", {"old": "one", "new": "two", "replace_all": "yes"}, format="json"
    )

    assert number.status_code == 400
    assert "content" in number.json()["error"]["details"]
    assert loose.status_code == 400
    assert "replace_all" in loose.json()["error"]["details"]
    assert Document.objects.get().content == "one one"
