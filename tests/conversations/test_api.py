from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client, override_settings
from rest_framework.test import APIClient

from accounts.services import CreatedApiKey
from conversations.models import ConversationEntry, Thread
from tests.conversations.factories import ConversationFactory

pytestmark = pytest.mark.django_db

Tenant = Callable[[str], APIClient]


@pytest.fixture
def alice(tenant_client: Tenant) -> APIClient:
    return tenant_client("alice")


@pytest.fixture
def bob(tenant_client: Tenant) -> APIClient:
    return tenant_client("bob")


def _post(client: APIClient, url: str, body: dict[str, Any] | None = None) -> Any:
    return client.post(f"/api/v1/{url}", body or {}, format="json")


def _send(client: APIClient, content: str = "hello", channel: str = "web") -> dict[str, Any]:
    response = _post(client, "messages", {"channel": channel, "content": content})
    assert response.status_code == 202, response.json()
    body: dict[str, Any] = response.json()
    return body


def test_post_message_spawns_and_answers_202(alice: APIClient) -> None:
    response = _post(alice, "messages", {"channel": "web", "content": "hello"})

    body = response.json()
    assert response.status_code == 202
    assert set(body) >= {"conversation_id", "thread_id", "action", "seq"}
    assert (body["action"], body["seq"]) == ("spawned", 1)
    assert Thread.objects.get(pk=body["thread_id"]).user_id == "alice"


def test_service_key_acts_for_the_tenant_in_the_header(
    make_api_key: Callable[..., CreatedApiKey],
) -> None:
    client = APIClient()
    client.credentials(
        HTTP_AUTHORIZATION=f"Bearer {make_api_key(service=True).raw_key}", HTTP_X_USER_ID="carol"
    )

    body = _send(client)

    assert Thread.objects.get(pk=body["thread_id"]).user_id == "carol"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"content": "hi"}, "channel"),
        ({"channel": "web"}, "content"),
        ({"channel": "web", "content": ""}, "content"),
        ({"channel": "web", "content": "   "}, "content"),
        ({"channel": "bad channel", "content": "hi"}, "channel"),
        ({"channel": "web", "content": "hi", "scope": "\x00"}, "scope"),
        ({"channel": "web", "content": 5}, "content"),
        ({"channel": "web", "content": True}, "content"),
        ({"channel": "web", "content": ["hi"]}, "content"),
        ({"channel": "web", "content": None}, "content"),
        ({"channel": 7, "content": "hi"}, "channel"),
        ({"channel": "web", "content": "hi", "scope": 5}, "scope"),
        ({"channel": "x" * 65, "content": "hi"}, "channel"),
        ({"channel": "we\x01b", "content": "hi"}, "channel"),
    ],
)
def test_invalid_message_is_400_naming_the_field(
    alice: APIClient, body: dict[str, Any], field: str
) -> None:
    response = _post(alice, "messages", body)

    assert response.status_code == 400
    assert field in response.json()["error"]["details"]
    assert not ConversationEntry.objects.exists()


@override_settings(CONVERSATION_MAX_MESSAGE_BYTES=1000)
def test_content_over_the_limit_is_413(alice: APIClient) -> None:
    response = _post(alice, "messages", {"channel": "web", "content": "x" * 1001})

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert "content" in response.json()["error"]["details"]
    assert not ConversationEntry.objects.exists()


def test_default_limit_accepts_64_kib_and_refuses_more(alice: APIClient) -> None:
    ok = _post(alice, "messages", {"channel": "web", "content": "x" * 65_536})
    too_big = _post(alice, "messages", {"channel": "web", "content": "x" * 65_537})

    assert (ok.status_code, too_big.status_code) == (202, 413)


def test_reject_policy_is_409(alice: APIClient) -> None:
    first = _send(alice)
    _post(alice, f"conversations/{first['conversation_id']}/policy", {"busy_policy": "reject"})

    response = _post(alice, "messages", {"channel": "web", "content": "again"})

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "message_rejected"


def test_list_conversations_newest_first_filtered_by_channel(
    alice: APIClient, bob: APIClient
) -> None:
    web = _send(alice, channel="web")
    telegram = _send(alice, channel="telegram")
    _send(bob, channel="web")

    everything = alice.get("/api/v1/conversations").json()
    only_web = alice.get("/api/v1/conversations", {"channel": "web"}).json()

    assert [c["id"] for c in everything["results"]] == [
        telegram["conversation_id"],
        web["conversation_id"],
    ]
    assert {"next", "previous", "results"} <= set(everything)
    assert [c["id"] for c in only_web["results"]] == [web["conversation_id"]]


def test_list_conversations_pages_with_a_cursor(alice: APIClient) -> None:
    for n in range(5):
        _send(alice, channel=f"c{n}")

    first = alice.get("/api/v1/conversations", {"limit": 2}).json()
    second = alice.get(first["next"]).json()

    assert [c["channel"] for c in first["results"]] == ["c4", "c3"]
    assert [c["channel"] for c in second["results"]] == ["c2", "c1"]


def test_list_conversations_query_count_does_not_grow_with_rows(
    alice: APIClient, django_assert_num_queries: Any
) -> None:
    ConversationFactory.create_batch(3, user_id="alice")
    alice.get("/api/v1/conversations")  # warm the key lookup path
    # The API key lookup, the rate limit and one page query.
    with django_assert_num_queries(3) as few:
        alice.get("/api/v1/conversations")
    ConversationFactory.create_batch(30, user_id="alice")

    with django_assert_num_queries(len(few.captured_queries)):
        alice.get("/api/v1/conversations")


def test_entries_query_count_does_not_grow_with_rows(
    alice: APIClient, django_assert_max_num_queries: Any
) -> None:
    sent = _send(alice)
    url = f"/api/v1/conversations/{sent['conversation_id']}/entries"
    for n in range(30):
        _send(alice, f"more {n}")

    # The API key lookup, the rate limit, the tenant check and one page query.
    with django_assert_max_num_queries(4):
        page = alice.get(url, {"limit": 25}).json()
    with django_assert_max_num_queries(4):
        alice.get(page["next"])

    assert len(page["results"]) == 25


def test_conversation_detail_shows_active_threads(alice: APIClient) -> None:
    sent = _send(alice)

    body = alice.get(f"/api/v1/conversations/{sent['conversation_id']}").json()

    assert body["id"] == sent["conversation_id"]
    assert body["effective_busy_policy"] == "inject"
    assert [thread["id"] for thread in body["active_threads"]] == [sent["thread_id"]]
    thread = body["active_threads"][0]
    assert set(thread) >= {
        "id",
        "conversation_id",
        "kind",
        "state",
        "goal",
        "tracked",
        "lease_owner",
        "lease_expires_at",
        "outcome",
    }


def test_entries_after_seq_in_order_with_the_design_shape(alice: APIClient) -> None:
    sent = _send(alice, "one")
    _send(alice, "two")
    _send(alice, "three")

    body = alice.get(
        f"/api/v1/conversations/{sent['conversation_id']}/entries", {"after_seq": 2}
    ).json()

    assert [(e["seq"], e["content"]) for e in body["results"]] == [(3, "two"), (4, "three")]
    assert set(body["results"][0]) >= {
        "id",
        "seq",
        "sender",
        "content",
        "thread_id",
        "created_at",
        "delivered_at",
    }
    assert body["results"][0]["thread_id"] == sent["thread_id"]


def test_entries_after_seq_must_be_a_number(alice: APIClient) -> None:
    sent = _send(alice)

    response = alice.get(
        f"/api/v1/conversations/{sent['conversation_id']}/entries", {"after_seq": "x"}
    )

    assert response.status_code == 400
    assert "after_seq" in response.json()["error"]["details"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "conversations/{conversation}"),
        ("get", "conversations/{conversation}/entries"),
        ("post", "conversations/{conversation}/clear"),
        ("post", "conversations/{conversation}/policy"),
        ("get", "threads/{thread}"),
        ("post", "threads/{thread}/claim"),
        ("post", "threads/{thread}/heartbeat"),
        ("post", "threads/{thread}/inbox"),
        ("post", "threads/{thread}/suspend"),
        ("post", "threads/{thread}/outcome"),
    ],
)
def test_another_tenants_or_unknown_objects_are_404(
    alice: APIClient, bob: APIClient, method: str, path: str
) -> None:
    sent = _send(bob)
    body = {"worker_id": "w1", "kind": "stopped", "busy_policy": "queue"}
    foreign = path.format(conversation=sent["conversation_id"], thread=sent["thread_id"])
    unknown = path.format(conversation=uuid.uuid4(), thread=uuid.uuid4())

    responses = [
        getattr(alice, method)(f"/api/v1/{url}", body, format="json") for url in (foreign, unknown)
    ]

    assert [response.status_code for response in responses] == [404, 404]
    assert Thread.objects.get(pk=sent["thread_id"]).state == "created"
    assert ConversationEntry.objects.count() == 2


def test_engine_flow_claim_heartbeat_inbox_outcome(alice: APIClient) -> None:
    sent = _send(alice, "start")
    thread = f"threads/{sent['thread_id']}"

    claimed = _post(alice, f"{thread}/claim", {"worker_id": "w1", "lease_seconds": 30})
    _send(alice, "more")
    beat = _post(alice, f"{thread}/heartbeat", {"worker_id": "w1"})
    inbox = _post(alice, f"{thread}/inbox", {"worker_id": "w1"})
    outcome = _post(
        alice, f"{thread}/outcome", {"kind": "completed", "response": "done", "worker_id": "w1"}
    )
    again = _post(
        alice, f"{thread}/outcome", {"kind": "completed", "response": "done", "worker_id": "w1"}
    )

    assert claimed.status_code == 200
    assert claimed.json()["state"] == "running"
    assert beat.json()["cancel_requested"] is False
    assert [entry["content"] for entry in inbox.json()["entries"]] == ["more"]
    assert outcome.status_code == 200
    assert outcome.json()["thread"]["state"] == "completed"
    assert outcome.json()["follow_up_thread"] is None
    assert [entry["content"] for entry in outcome.json()["entries"]] == ["done"]
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "outcome_already_recorded"
    assert ConversationEntry.objects.filter(sender="agent").count() == 1


def test_second_claimer_gets_409(alice: APIClient) -> None:
    sent = _send(alice)
    _post(alice, f"threads/{sent['thread_id']}/claim", {"worker_id": "w1"})

    response = _post(alice, f"threads/{sent['thread_id']}/claim", {"worker_id": "w2"})

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "thread_not_claimable"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "exploded", "worker_id": "w1"}, "kind"),
        ({"kind": "failed", "worker_id": "w1"}, "error"),
        ({"kind": "gate_paused", "worker_id": "w1"}, "gate"),
        ({"kind": "stopped"}, "worker_id"),
        ({"kind": "stopped", "worker_id": 1}, "worker_id"),
        ({"kind": "stopped", "worker_id": ""}, "worker_id"),
        ({"kind": "stopped", "worker_id": "w" * 256}, "worker_id"),
        ({"kind": "completed", "response": 42, "worker_id": "w1"}, "response"),
        ({"kind": "gate_paused", "gate": "approve", "worker_id": "w1"}, "gate"),
        ({"kind": "gate_paused", "gate": {"name": "g", "action": 5}, "worker_id": "w1"}, "gate"),
    ],
)
def test_invalid_outcome_is_400_naming_the_field(
    alice: APIClient, body: dict[str, Any], field: str
) -> None:
    sent = _send(alice)
    _post(alice, f"threads/{sent['thread_id']}/claim", {"worker_id": "w1"})

    response = _post(alice, f"threads/{sent['thread_id']}/outcome", body)

    assert response.status_code == 400
    assert field in response.json()["error"]["details"]
    assert Thread.objects.get(pk=sent["thread_id"]).state == "running"


@pytest.mark.parametrize("endpoint", ["claim", "heartbeat"])
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "worker_id"),
        ({"worker_id": 5}, "worker_id"),
        ({"worker_id": "   "}, "worker_id"),
        ({"worker_id": "w\x01"}, "worker_id"),
        ({"worker_id": "w\u200b1"}, "worker_id"),
        ({"worker_id": "w1", "lease_seconds": "soon"}, "lease_seconds"),
        ({"worker_id": "w1", "lease_seconds": -1}, "lease_seconds"),
        ({"worker_id": "w1", "lease_seconds": 1.5}, "lease_seconds"),
        ({"worker_id": "w1", "lease_seconds": 10**30}, "lease_seconds"),
    ],
)
def test_invalid_lease_request_is_400_naming_the_field(
    alice: APIClient, endpoint: str, body: dict[str, Any], field: str
) -> None:
    sent = _send(alice)

    response = _post(alice, f"threads/{sent['thread_id']}/{endpoint}", body)

    assert response.status_code == 400
    assert field in response.json()["error"]["details"]
    assert Thread.objects.get(pk=sent["thread_id"]).state == "created"


def test_lease_seconds_over_the_maximum_is_400(alice: APIClient) -> None:
    sent = _send(alice)

    response = _post(
        alice, f"threads/{sent['thread_id']}/claim", {"worker_id": "w1", "lease_seconds": 10**6}
    )

    assert response.status_code == 400
    assert "lease_seconds" in response.json()["error"]["details"]


def test_clear_and_new_conversation_endpoints(alice: APIClient) -> None:
    sent = _send(alice)

    cleared = _post(alice, f"conversations/{sent['conversation_id']}/clear")
    new = _post(alice, "conversations/new", {"channel": "web"})
    after = _send(alice, "in the new one")

    assert cleared.json()["deleted_entries"] == 2
    assert cleared.json()["untracked_thread_ids"] == [sent["thread_id"]]
    assert new.status_code == 201
    assert after["conversation_id"] == new.json()["id"] != sent["conversation_id"]


def test_every_endpoint_is_in_the_openapi_schema(client: Client) -> None:
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()

    for path in [
        "/api/v1/messages",
        "/api/v1/conversations",
        "/api/v1/conversations/new",
        "/api/v1/conversations/{conversation_id}",
        "/api/v1/conversations/{conversation_id}/entries",
        "/api/v1/conversations/{conversation_id}/clear",
        "/api/v1/threads/{thread_id}",
        "/api/v1/threads/{thread_id}/claim",
        "/api/v1/threads/{thread_id}/heartbeat",
        "/api/v1/threads/{thread_id}/inbox",
        "/api/v1/threads/{thread_id}/outcome",
    ]:
        assert path in schema["paths"], path
    message = schema["paths"]["/api/v1/messages"]["post"]
    assert {"202", "400", "409", "413"} <= set(message["responses"])
    # Every operation that validates input documents its 400.
    for path, method in [
        ("/api/v1/conversations", "get"),
        ("/api/v1/conversations/{conversation_id}/entries", "get"),
        ("/api/v1/threads/{thread_id}/inbox", "post"),
        ("/api/v1/threads/{thread_id}/suspend", "post"),
    ]:
        assert "400" in schema["paths"][path][method]["responses"], path


def test_body_over_djangos_upload_limit_is_413_not_500(alice: APIClient) -> None:
    response = _post(alice, "messages", {"channel": "web", "content": "x" * 3_000_000})

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert not ConversationEntry.objects.exists()


def test_suspended_thread_is_resumed_by_the_next_message(alice: APIClient) -> None:
    sent = _send(alice, "start")
    _post(alice, f"threads/{sent['thread_id']}/claim", {"worker_id": "w1"})

    suspended = _post(alice, f"threads/{sent['thread_id']}/suspend", {"worker_id": "w1"})
    resumed = _send(alice, "wake up")

    assert suspended.json()["state"] == "suspended"
    assert (resumed["action"], resumed["thread_id"]) == ("resumed", sent["thread_id"])


def _cursor(querystring: str) -> str:
    return base64.b64encode(querystring.encode()).decode()


@pytest.mark.parametrize(
    ("url", "cursor"),
    [
        ("conversations/{conversation}/entries", _cursor("p=abc")),
        ("conversations/{conversation}/entries", _cursor("o=1&p=")),
        ("conversations", _cursor("p=notadate")),
        ("conversations", _cursor("o=5&p=x")),
        ("conversations", _cursor("p=2026-01-01T00:00:00")),
        ("conversations", "garbage"),
        ("conversations", "%C3%94"),
    ],
)
def test_a_malformed_cursor_is_400_naming_the_cursor(
    alice: APIClient, url: str, cursor: str
) -> None:
    sent = _send(alice)

    response = alice.get(
        f"/api/v1/{url.format(conversation=sent['conversation_id'])}?cursor={cursor}"
    )

    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"cursor": ["Invalid cursor"]}


def test_cursors_the_api_hands_out_still_page(alice: APIClient) -> None:
    sent = _send(alice, "one")
    _send(alice, "two")
    entries = f"/api/v1/conversations/{sent['conversation_id']}/entries"

    first = alice.get(entries, {"limit": 2}).json()
    second = alice.get(first["next"]).json()
    back = alice.get(second["previous"]).json()

    assert [e["seq"] for e in first["results"]] == [1, 2]
    assert [e["seq"] for e in second["results"]] == [3]
    assert [e["seq"] for e in back["results"]] == [1, 2]


@pytest.mark.parametrize("limit", ["-1", "0", "ten", "2.5", "1001"])
def test_conversation_and_entry_lists_refuse_a_limit_out_of_range_naming_it(
    alice: APIClient, limit: str
) -> None:
    conversation_id = _send(alice)["conversation_id"]

    lists = [
        alice.get("/api/v1/conversations", {"limit": limit}),
        alice.get(f"/api/v1/conversations/{conversation_id}/entries", {"limit": limit}),
    ]

    for response in lists:
        assert response.status_code == 400
        assert "limit" in response.json()["error"]["details"]


def test_first_entry_of_a_spawn_is_never_delivered_before_it_was_created(
    alice: APIClient,
) -> None:
    sent = _send(alice)

    entry = ConversationEntry.objects.get(conversation_id=sent["conversation_id"], seq=sent["seq"])
    assert entry.delivered_at is not None
    assert entry.delivered_at >= entry.created_at
