"""The event-stream endpoints' answers as a client sees them through Django's test client: the
replay alone (no web server to hand the connection to), errors in the API's JSON shape.
Live delivery through the hub is tested with a real server in tests/core/test_streams.py and the
client's tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient

from accounts.models import ApiKey
from conversations.models import Thread
from conversations.services import message_handle, thread_stop
from core import streams

pytestmark = pytest.mark.django_db(transaction=True)


def _frames(body: bytes) -> list[tuple[str | None, str, dict[str, Any]]]:
    frames = []
    for block in body.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
        if "event" in fields:
            frames.append((fields.get("id"), fields["event"], json.loads(fields["data"])))
    return frames


def test_a_replay_from_zero_sends_the_conversation_as_an_event_stream(
    tenant_client: Callable[[str], APIClient],
) -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")
    response = tenant_client("alice").get(
        f"/api/v1/conversations/{sent.conversation_id}/events?after=0",
        HTTP_ACCEPT="text/event-stream",
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/event-stream")
    assert response["Cache-Control"] == "no-cache"
    assert response["X-Accel-Buffering"] == "no"
    assert response.content.startswith(b": stream open\n\nretry: 1000\n\n")
    frames = _frames(response.content)
    assert [(event, data.get("content", data.get("type"))) for _, event, data in frames] == [
        ("entry", "hello"),
        ("entry", "Thread started"),
        ("thread", "spawned"),
    ]
    # Resuming from the last id sends nothing more; from the first, the rest.
    last, first = frames[-1][0], frames[0][0]
    client = tenant_client("alice")
    url = f"/api/v1/conversations/{sent.conversation_id}/events"
    assert _frames(client.get(url, HTTP_LAST_EVENT_ID=last).content) == []
    assert _frames(client.get(url, HTTP_LAST_EVENT_ID=first).content) == frames[1:]
    # The header wins over the parameter, as EventSource's reconnection expects.
    assert _frames(client.get(f"{url}?after=0", HTTP_LAST_EVENT_ID=last).content) == []


def test_without_a_cursor_a_stream_starts_now(tenant_client: Callable[[str], APIClient]) -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")
    response = tenant_client("alice").get(f"/api/v1/conversations/{sent.conversation_id}/events")
    assert response.status_code == 200
    assert _frames(response.content) == []


def test_another_tenants_conversation_or_thread_is_not_found(
    tenant_client: Callable[[str], APIClient],
) -> None:
    sent = message_handle(user_id="alice", channel="web", content="private")
    bob = tenant_client("bob")
    for url in (
        f"/api/v1/conversations/{sent.conversation_id}/events?after=0",
        f"/api/v1/threads/{sent.thread_id}/events?after=0",
    ):
        response = bob.get(url)
        assert response.status_code == 404, url
        assert response.json()["error"]["code"].endswith("not_found")


@pytest.mark.parametrize(
    ("header", "param", "named"),
    [
        ("garbage", None, "Last-Event-ID"),
        (None, "-1", "after"),
        (None, "1." + ".".join(f"{n}:1" for n in range(70)), "after"),
        ("x" * 10_000, None, "Last-Event-ID"),
    ],
)
def test_a_cursor_the_stream_never_sent_is_a_400_naming_where_it_came_from(
    tenant_client: Callable[[str], APIClient], header: str | None, param: str | None, named: str
) -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")
    url = f"/api/v1/conversations/{sent.conversation_id}/events"
    extra: dict[str, Any] = {"HTTP_LAST_EVENT_ID": header} if header is not None else {}
    response = tenant_client("alice").get(url, {"after": param} if param else {}, **extra)
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert named in response.json()["error"]["details"]


def test_a_thread_stream_of_an_ended_thread_sends_how_it_ended_and_ends(
    tenant_client: Callable[[str], APIClient],
) -> None:
    sent = message_handle(user_id="alice", channel="web", content="stop me")
    thread_stop(user_id="alice", thread_id=sent.thread_id)
    client = tenant_client("alice")
    url = f"/api/v1/threads/{sent.thread_id}/events"
    frames = _frames(client.get(url).content)
    assert [(i, data["type"], data["state"]) for i, _, data in frames] == [
        ("2", "stopped", "stopped")
    ]
    assert frames[0][2]["outcome"]["kind"] == "stopped"
    assert [d["type"] for _, _, d in _frames(client.get(f"{url}?after=0").content)] == [
        "spawned",
        "stopped",
    ]
    # Nothing more will come: 204, which tells EventSource to stop reconnecting.
    ended = client.get(url, HTTP_LAST_EVENT_ID="2")
    assert ended.status_code == 204
    assert ended.content == b""
    assert client.get(url, HTTP_LAST_EVENT_ID="2.5").status_code == 400


def test_a_key_with_every_stream_slot_taken_is_a_429_with_retry_after(
    tenant_client: Callable[[str], APIClient], settings: Any
) -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")
    client = tenant_client("alice")
    key = ApiKey.objects.get(user_id="alice")
    hub = streams.hub()
    held = 0
    try:
        while hub.admit(f"key:{key.pk}"):
            held += 1
        response = client.get(f"/api/v1/conversations/{sent.conversation_id}/events")
    finally:
        for _ in range(held):
            hub.release(f"key:{key.pk}")
    assert held == settings.STREAMS_PER_KEY
    assert response.status_code == 429
    assert response["Retry-After"] == "5"
    assert response.json()["error"]["code"] == "rate_limited"
    # Slots freed, streams open again; a stream answered without a hand-off frees its own.
    assert client.get(f"/api/v1/conversations/{sent.conversation_id}/events").status_code == 200
    assert hub.admitted(f"key:{key.pk}") == 0


def test_a_thread_event_records_who_stopped_nothing_but_the_state(
    tenant_client: Callable[[str], APIClient],
) -> None:
    """Usage and claim count come with every state event, from the row the change wrote."""
    sent = message_handle(user_id="alice", channel="web", content="hi")
    Thread.objects.filter(pk=sent.thread_id).update(input_tokens=5)
    thread_stop(user_id="alice", thread_id=sent.thread_id)
    frames = _frames(
        tenant_client("alice").get(f"/api/v1/threads/{sent.thread_id}/events?after=1").content
    )
    assert frames[0][2]["usage"]["input_tokens"] == 5
    assert frames[0][2]["claim_count"] == 0


@pytest.mark.parametrize(
    "cursor",
    ["99", "3.2:7", "3.3:0", "3.2:2147483648", "3.2:9999999999"],
)
def test_a_cursor_ahead_of_the_conversation_or_beyond_any_thread_is_a_400(
    tenant_client: Callable[[str], APIClient], cursor: str
) -> None:
    """A cursor kept from before a restore would skip what comes to fill the difference."""
    message_handle(user_id="alice", channel="web", content="one")
    sent = message_handle(user_id="alice", channel="web", content="two")  # injected: seq 3
    assert sent.seq == 3
    response = tenant_client("alice").get(
        f"/api/v1/conversations/{sent.conversation_id}/events", {"after": cursor}
    )
    assert response.status_code == 400, response.content
    assert "after" in response.json()["error"]["details"]


@pytest.mark.parametrize("cursor", ["2", "2147483648", "9999999999"])
def test_a_thread_cursor_beyond_its_last_event_is_a_400(
    tenant_client: Callable[[str], APIClient], cursor: str
) -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")
    response = tenant_client("alice").get(
        f"/api/v1/threads/{sent.thread_id}/events", HTTP_LAST_EVENT_ID=cursor
    )
    assert response.status_code == 400
    assert "Last-Event-ID" in response.json()["error"]["details"]


@pytest.mark.django_db(transaction=False)
def test_a_stream_inside_a_request_transaction_keeps_its_connection(
    tenant_client: Callable[[str], APIClient],
) -> None:
    """The replay reads on the request's own connection and leaves it open (ATOMIC_REQUESTS,
    a test's transaction)."""
    sent = message_handle(user_id="alice", channel="web", content="hello")
    response = tenant_client("alice").get(
        f"/api/v1/conversations/{sent.conversation_id}/events?after=0"
    )
    assert response.status_code == 200
    assert len(_frames(response.content)) == 3
