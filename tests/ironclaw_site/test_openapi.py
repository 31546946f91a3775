"""`/api/schema/` is one a client generator can trust: every operation named, summarised and
documented with its errors in the one `Error` shape, the `X-User-Id` header declared, and examples
that still match what the endpoints answer."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.test import Client
from jsonschema import Draft202012Validator
from pytest_django.fixtures import Settings as SettingsWrapper
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

API_PREFIX = "/api/v1/"
ERROR_REF = {"$ref": "#/components/schemas/Error"}
# Client code is generated from these names: renaming one breaks every client, so it is a
# deliberate change to this list.
OPERATION_IDS = {
    ("get", "/api/v1/me"): "me",
    ("post", "/api/v1/messages"): "message_create",
    ("get", "/api/v1/conversations"): "conversation_list",
    ("post", "/api/v1/conversations/new"): "conversation_new",
    ("get", "/api/v1/conversations/{conversation_id}"): "conversation_get",
    ("post", "/api/v1/conversations/{conversation_id}/policy"): "conversation_policy_set",
    ("get", "/api/v1/conversations/{conversation_id}/entries"): "conversation_entries",
    ("get", "/api/v1/conversations/{conversation_id}/events"): "conversation_events",
    ("post", "/api/v1/conversations/{conversation_id}/clear"): "conversation_clear",
    ("get", "/api/v1/threads/{thread_id}"): "thread_get",
    ("get", "/api/v1/threads/{thread_id}/events"): "thread_events",
    ("post", "/api/v1/threads/next"): "thread_next",
    ("post", "/api/v1/threads/{thread_id}/claim"): "thread_claim",
    ("post", "/api/v1/threads/{thread_id}/heartbeat"): "thread_heartbeat",
    ("post", "/api/v1/threads/{thread_id}/suspend"): "thread_suspend",
    ("post", "/api/v1/threads/{thread_id}/inbox"): "thread_inbox_take",
    ("post", "/api/v1/threads/{thread_id}/outcome"): "thread_outcome_record",
    ("put", "/api/v1/threads/{thread_id}/checkpoint"): "thread_checkpoint_write",
    ("post", "/api/v1/threads/{thread_id}/deltas"): "thread_delta_publish",
    ("get", "/api/v1/workspace/documents/{path}"): "workspace_document_read",
    ("put", "/api/v1/workspace/documents/{path}"): "workspace_document_write",
    ("delete", "/api/v1/workspace/documents/{path}"): "workspace_document_delete",
    ("post", "/api/v1/workspace/documents/{path}/append"): "workspace_document_append",
    ("post", "/api/v1/workspace/documents/{path}/patch"): "workspace_document_patch",
    ("get", "/api/v1/workspace/documents/{path}/versions"): "workspace_document_versions",
    ("get", "/api/v1/workspace/documents/{path}/versions/{version}"): (
        "workspace_document_version"
    ),
    ("post", "/api/v1/workspace/documents/{path}/versions/{version}/restore"): (
        "workspace_document_restore"
    ),
    ("get", "/api/v1/workspace/list"): "workspace_list",
    ("get", "/api/v1/workspace/tree"): "workspace_tree",
    ("post", "/api/v1/workspace/search"): "workspace_search",
    ("get", "/api/v1/routines"): "routine_list",
    ("post", "/api/v1/routines"): "routine_create",
    ("get", "/api/v1/routines/{routine_id}"): "routine_get",
    ("patch", "/api/v1/routines/{routine_id}"): "routine_update",
    ("delete", "/api/v1/routines/{routine_id}"): "routine_delete",
    ("get", "/api/v1/routines/{routine_id}/firings"): "routine_firing_list",
    ("get", "/api/v1/webhooks"): "webhook_list",
    ("post", "/api/v1/webhooks"): "webhook_create",
    ("get", "/api/v1/webhooks/{webhook_id}"): "webhook_get",
    ("patch", "/api/v1/webhooks/{webhook_id}"): "webhook_update",
    ("delete", "/api/v1/webhooks/{webhook_id}"): "webhook_delete",
    ("get", "/api/v1/webhooks/{webhook_id}/deliveries"): "webhook_delivery_list",
    ("get", "/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}"): "webhook_delivery_get",
    ("post", "/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver"): (
        "webhook_delivery_redeliver"
    ),
}


@pytest.fixture(scope="module")
def schema(django_db_blocker: Any) -> dict[str, Any]:
    with django_db_blocker.unblock():
        response = Client().get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def _operations(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in schema["paths"].items():
        if not path.startswith(API_PREFIX):
            continue
        for method, operation in item.items():
            if method in {"get", "put", "post", "patch", "delete"}:
                yield method, path, operation


def test_every_operation_has_a_stable_operation_id_and_a_summary(schema: dict[str, Any]) -> None:
    found = {(method, path): op["operationId"] for method, path, op in _operations(schema)}
    summaries = {op["operationId"]: op.get("summary", "") for _, _, op in _operations(schema)}

    assert found == OPERATION_IDS
    assert [name for name, summary in summaries.items() if not summary.strip()] == []
    assert len(set(summaries.values())) == len(summaries)


def test_every_operation_documents_401_403_and_503(schema: dict[str, Any]) -> None:
    missing = [
        (op["operationId"], status)
        for _, _, op in _operations(schema)
        for status in ("401", "403", "503")
        if status not in op["responses"]
    ]

    assert missing == []


def test_every_error_response_is_the_one_error_schema(schema: dict[str, Any]) -> None:
    other = [
        (op["operationId"], status, response.get("content"))
        for _, _, op in _operations(schema)
        for status, response in op["responses"].items()
        if int(status) >= 400
        and response.get("content") != {"application/json": {"schema": ERROR_REF}}
    ]
    error = schema["components"]["schemas"]["Error"]
    body = schema["components"]["schemas"]["ErrorBody"]

    assert other == []
    assert error["required"] == ["error"]
    assert sorted(body["properties"]) == ["code", "details", "message"]


def test_every_operation_declares_the_optional_x_user_id_header(schema: dict[str, Any]) -> None:
    headers = {
        op["operationId"]: [
            parameter
            for parameter in op.get("parameters", [])
            if parameter["in"] == "header" and parameter["name"] == "X-User-Id"
        ]
        for _, _, op in _operations(schema)
    }

    assert {name: len(found) for name, found in headers.items()} == {
        name: 1 for name in OPERATION_IDS.values()
    }
    for found in headers.values():
        assert found[0]["required"] is False
        assert "service key" in found[0]["description"]
        assert "tenant key may omit it" in found[0]["description"]


@pytest.mark.parametrize("operation_id", ["thread_claim", "thread_heartbeat", "thread_inbox_take"])
def test_thread_lease_operations_document_409_thread_busy(
    schema: dict[str, Any], operation_id: str
) -> None:
    operation = next(op for _, _, op in _operations(schema) if op["operationId"] == operation_id)

    assert "thread_busy" in operation["responses"]["409"]["description"]


def _json_schema(node: Any) -> Any:
    """OpenAPI 3.0 schema objects as JSON Schema: ``nullable`` becomes a union with null, and
    boolean ``exclusiveMinimum``/``exclusiveMaximum`` turn their bound exclusive."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _json_schema(value) for key, value in node.items() if key != "nullable"}
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        flag = converted.get(exclusive)
        if isinstance(flag, bool):
            del converted[exclusive]
            if flag and bound in converted:
                converted[exclusive] = converted.pop(bound)
    if node.get("nullable"):
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


def _examples(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any], Any]]:
    """(operation, where, body schema, example value) for every example in the schema."""
    for _, _, op in _operations(schema):
        bodies = [("request", op.get("requestBody", {}).get("content", {}))] + [
            (status, response.get("content", {})) for status, response in op["responses"].items()
        ]
        for where, content in bodies:
            for media in content.values():
                for example in media.get("examples", {}).values():
                    yield op["operationId"], where, media["schema"], example["value"]


def test_every_example_validates_against_its_schema(schema: dict[str, Any]) -> None:
    components = _json_schema(schema["components"])
    examples = list(_examples(schema))
    errors = [
        (operation, where, error.message)
        for operation, where, body, value in examples
        for error in Draft202012Validator(
            {**_json_schema(body), "components": components}
        ).iter_errors(value)
    ]

    assert errors == []
    assert {(operation, where) for operation, where, _, _ in examples} >= {
        ("message_create", "request"),
        ("message_create", "202"),
        ("conversation_entries", "200"),
        ("thread_get", "200"),
        ("workspace_document_read", "200"),
        ("workspace_document_write", "request"),
        ("workspace_search", "request"),
        ("workspace_search", "200"),
    }


def _shape(value: Any) -> Any:
    """The keys of a JSON value, recursively (lists by their first item)."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return None


def test_examples_have_the_keys_real_responses_have(
    schema: dict[str, Any],
    settings: SettingsWrapper,
    tenant_client: Callable[[str], APIClient],
) -> None:
    settings.WORKSPACE_INDEXING = "inline"
    settings.THREAD_RUNNER = "conversations.runners.wait_for_external_engine"
    client = tenant_client("alice")
    examples = {(operation, where): value for operation, where, _, value in _examples(schema)}

    message = client.post(
        "/api/v1/messages", examples[("message_create", "request")], format="json"
    )
    conversation_id, thread_id = message.json()["conversation_id"], message.json()["thread_id"]
    written = client.put(
        "/api/v1/workspace/documents/notes/garden.md",
        examples[("workspace_document_write", "request")],
        format="json",
    )
    real = {
        ("message_create", "202"): message,
        ("conversation_entries", "200"): client.get(
            f"/api/v1/conversations/{conversation_id}/entries"
        ),
        ("thread_get", "200"): client.get(f"/api/v1/threads/{thread_id}"),
        ("workspace_document_write", "200"): written,
        ("workspace_document_read", "200"): client.get(
            "/api/v1/workspace/documents/notes/garden.md"
        ),
        ("workspace_search", "200"): client.post(
            "/api/v1/workspace/search", examples[("workspace_search", "request")], format="json"
        ),
    }

    for key, response in real.items():
        assert response.status_code == int(key[1]), (key, response.json())
        assert _shape(examples[key]) == _shape(response.json()), key


# A valid body for each workspace write, into which each text field's wrong value is put.
WORKSPACE_WRITE_BODIES = {
    "workspace_document_write": ("put", "/api/v1/workspace/documents/a.md", {"content": "x"}),
    "workspace_document_append": (
        "post",
        "/api/v1/workspace/documents/a.md/append",
        {"content": "x"},
    ),
    "workspace_document_patch": (
        "post",
        "/api/v1/workspace/documents/a.md/patch",
        {"old": "one", "new": "two"},
    ),
    "workspace_search": ("post", "/api/v1/workspace/search", {"query": "one"}),
}


def _text_fields(schema: dict[str, Any], body: dict[str, Any]) -> list[str]:
    components = schema["components"]["schemas"]

    def resolved(node: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in node:
            return resolved(components[node["$ref"].rsplit("/", 1)[1]])
        if "allOf" in node:
            return resolved(node["allOf"][0])
        return node

    properties = resolved(body)["properties"]
    return sorted(
        name for name, field in properties.items() if resolved(field).get("type") == "string"
    )


def test_every_workspace_text_field_refuses_numbers_and_booleans(
    schema: dict[str, Any], tenant_client: Callable[[str], APIClient]
) -> None:
    client = tenant_client("alice")
    client.put("/api/v1/workspace/documents/a.md", {"content": "one"}, format="json")
    writes = {
        op["operationId"]: _text_fields(
            schema, op["requestBody"]["content"]["application/json"]["schema"]
        )
        for method, path, op in _operations(schema)
        if path.startswith("/api/v1/workspace/") and method in {"put", "post"}
        if "requestBody" in op
    }
    accepted = []

    for operation_id, fields in writes.items():
        method, url, valid = WORKSPACE_WRITE_BODIES[operation_id]
        for field in fields:
            for wrong in (5, 1.5, True, False):
                response = getattr(client, method)(url, {**valid, field: wrong}, format="json")
                if response.status_code != 400 or field not in response.json()["error"]["details"]:
                    accepted.append((operation_id, field, wrong, response.status_code))

    assert writes == {
        "workspace_document_write": ["content"],
        "workspace_document_append": ["content"],
        "workspace_document_patch": ["new", "old"],
        "workspace_search": ["mode", "query"],
    }
    assert accepted == []
    assert client.get("/api/v1/workspace/documents/a.md").json()["content"] == "one"
