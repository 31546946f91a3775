"""The admin's staff-session event streams (the live panels' source) under Django's test client:
who gets them, what they replay, and their refusals. The test client offers no hand-off, so a
stream's answer is its replay alone (tests/operations/test_admin_live_browser.py has them live)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from rest_framework.test import APIClient

from conversations.services import (
    MessageResult,
    ThreadOutcome,
    ThreadUsage,
    message_handle,
    thread_claim,
    thread_outcome_record,
)
from core import notify, streams

# Transactional: a stream's replay read gives its connection back when it is done, which a
# test's enclosing transaction would not survive.
pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "staff-password-1"


@pytest.fixture(autouse=True)
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[streams.Hub]:
    """A hub of the test's own, as a web process has; its listener stops with it."""
    made = streams.Hub(per_key=2, read_threads=1, keepalive=15, lifetime=300, buffer_bytes=1 << 20)
    monkeypatch.setattr(streams, "_hub", made)
    yield made
    made.close()
    # The listener's connection would keep the test database from being dropped.
    notify.listener_stop()


def _frames(response: Any) -> list[dict[str, Any]]:
    """The events of a replay: each one's id, event and decoded data."""
    frames = []
    content: bytes = response.content
    for block in content.decode().split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if not line.startswith(":")
        )
        if "event" in fields:
            frames.append(
                {
                    "id": fields.get("id"),
                    "event": fields["event"],
                    "data": json.loads(fields["data"]),
                }
            )
    return frames


def _conversation_url(sent: MessageResult) -> str:
    return f"/admin/conversations/conversation/{sent.conversation_id}/events"


def _thread_url(sent: MessageResult) -> str:
    return f"/admin/conversations/thread/{sent.thread_id}/events"


def _finish(sent: MessageResult) -> None:
    thread_claim(user_id="alice", thread_id=sent.thread_id, worker_id="w1")
    thread_outcome_record(
        user_id="alice",
        thread_id=sent.thread_id,
        worker_id="w1",
        outcome=ThreadOutcome(kind="completed", response="echo: hello"),
        usage=ThreadUsage(steps=1, input_tokens=10, output_tokens=3, model_ms=50),
    )


def _client_of(*, staff: bool, permissions: tuple[str, ...] = ()) -> Client:
    user = get_user_model().objects.create_user("member", password=PASSWORD, is_staff=staff)
    user.user_permissions.set(Permission.objects.filter(codename__in=permissions))
    client = Client()
    client.force_login(user)
    return client


def test_staff_get_a_conversations_replay_from_their_cursor(admin_client: Client) -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")
    _finish(sent)

    everything = admin_client.get(_conversation_url(sent), {"after": "0"})
    from_now = admin_client.get(_conversation_url(sent))

    assert everything.status_code == 200
    assert everything["Content-Type"] == "text/event-stream"
    assert everything["X-Accel-Buffering"] == "no"
    assert "no-cache" in everything["Cache-Control"]
    assert everything.content.startswith(b": stream open\n\nretry: 1000\n\n")
    frames = _frames(everything)
    entries = [(f["data"]["sender"], f["data"]["content"]) for f in frames if f["event"] == "entry"]
    assert entries == [("user", "hello"), ("system", "Thread started"), ("agent", "echo: hello")]
    events = [(f["data"]["type"], f["data"]["state"]) for f in frames if f["event"] == "thread"]
    assert events == [("spawned", "created"), ("claimed", "running"), ("completed", "completed")]
    assert [f["data"]["usage"]["steps"] for f in frames if f["event"] == "thread"][-1] == 1
    # Ids are the cursor: the last one resumes after everything (the thread has ended).
    assert [f["id"] for f in frames] == ["1", "2.2:0", "2.2:1", "2.2:2", "2", "3"]
    assert _frames(from_now) == []


def test_the_staff_stream_resumes_from_last_event_id_which_wins_over_after(
    admin_client: Client,
) -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")

    resumed = admin_client.get(
        _conversation_url(sent), {"after": "0"}, headers={"Last-Event-ID": "1"}
    )

    assert [f["data"]["content"] for f in _frames(resumed) if f["event"] == "entry"] == [
        "Thread started"
    ]


def test_staff_get_a_threads_replay_and_an_ended_thread_its_final_event(
    admin_client: Client,
) -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")
    before = _frames(admin_client.get(_thread_url(sent), {"after": "0"}))
    _finish(sent)

    ended = _frames(admin_client.get(_thread_url(sent)))

    assert [(f["id"], f["data"]["type"]) for f in before] == [("1", "spawned")]
    assert [(f["id"], f["data"]["type"], f["data"]["state"]) for f in ended] == [
        ("3", "completed", "completed")
    ]
    assert ended[0]["data"]["outcome"]["response"] == "echo: hello"


def test_the_staff_stream_is_the_apis_for_the_same_cursor(
    admin_client: Client, tenant_client: Any
) -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")
    _finish(sent)
    api: APIClient = tenant_client("alice")

    for staff_url, api_url in [
        (_conversation_url(sent), f"/api/v1/conversations/{sent.conversation_id}/events"),
        (_thread_url(sent), f"/api/v1/threads/{sent.thread_id}/events"),
    ]:
        staff = admin_client.get(staff_url, {"after": "0"})
        tenant = api.get(api_url, {"after": "0"})
        assert (staff.status_code, tenant.status_code) == (200, 200)
        assert staff.content == tenant.content


@pytest.mark.parametrize("url", [_conversation_url, _thread_url])
def test_anonymous_and_non_staff_users_are_sent_to_the_login_page(url: Any) -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")

    anonymous = Client().get(url(sent), {"after": "0"})
    member = _client_of(staff=False).get(url(sent), {"after": "0"})

    for refused in (anonymous, member):
        assert refused.status_code == 302
        assert refused["Location"].startswith("/admin/login/")
        assert b"hello" not in refused.content


@pytest.mark.parametrize("url", [_conversation_url, _thread_url])
def test_staff_without_the_models_view_permission_are_refused(url: Any) -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")

    refused = _client_of(staff=True).get(url(sent), {"after": "0"})

    assert refused.status_code == 403
    assert b"hello" not in refused.content


def test_staff_with_the_view_permission_get_any_tenants_stream() -> None:
    alices = message_handle(user_id="alice", channel="web", content="from alice")
    bobs = message_handle(user_id="bob", channel="web", content="from bob")
    client = _client_of(staff=True, permissions=("view_conversation", "view_thread"))

    for sent, content in ((alices, "from alice"), (bobs, "from bob")):
        conversation = client.get(_conversation_url(sent), {"after": "0"})
        thread = client.get(_thread_url(sent), {"after": "0"})
        assert (conversation.status_code, thread.status_code) == (200, 200)
        assert _frames(conversation)[0]["data"]["content"] == content
        assert _frames(thread)[0]["data"]["type"] == "spawned"


@pytest.mark.parametrize(
    ("query", "headers", "name"),
    [({"after": "x"}, {}, "after"), ({"after": "0"}, {"Last-Event-ID": "1.2:3"}, "Last-Event-ID")],
)
def test_a_cursor_the_stream_never_sent_is_a_400_naming_it(
    admin_client: Client, query: dict[str, str], headers: dict[str, str], name: str
) -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")

    refused = admin_client.get(_conversation_url(sent), query, headers=headers)
    thread_refused = admin_client.get(_thread_url(sent), {"after": "1.2"})

    assert refused.status_code == 400
    body = refused.json()["error"]
    assert body["code"] == "invalid"
    assert list(body["details"]) == [name]
    assert thread_refused.status_code == 400
    assert list(thread_refused.json()["error"]["details"]) == ["after"]


def test_an_unknown_object_is_a_404(admin_client: Client) -> None:
    missing = "00000000-0000-0000-0000-000000000000"

    for model in ("conversation", "thread"):
        assert admin_client.get(f"/admin/conversations/{model}/{missing}/events").status_code == 404
        assert admin_client.get(f"/admin/conversations/{model}/nope/events").status_code == 404


def test_a_staff_member_holds_streams_on_their_own_slots(
    admin_client: Client, hub: streams.Hub
) -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")
    user = get_user_model().objects.get(username="admin")
    key = f"user:{user.pk}"
    # Both of this hub's slots, as two open pages would.
    assert [hub.admit(key), hub.admit(key)] == [True, True]

    refused = admin_client.get(_conversation_url(sent))
    hub.release(key)
    served = admin_client.get(_conversation_url(sent))

    assert refused.status_code == 429
    assert refused["Retry-After"] == "5"
    assert served.status_code == 200
    # Without a hand-off the replay was the whole answer: its slot is free again.
    assert hub.admitted(key) == 1


def test_the_pages_carry_their_live_panels_with_the_cursor_of_what_they_show(
    admin_client: Client,
) -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")

    conversation = admin_client.get(
        f"/admin/conversations/conversation/{sent.conversation_id}/change/"
    ).content.decode()
    thread = admin_client.get(f"/admin/conversations/thread/{sent.thread_id}/change/")

    assert f'data-events-url="{_conversation_url(sent)}"' in conversation
    # Entry 2 and the live thread's event 1: what the page shows.
    assert re.search(r'data-after="2\.2:1"', conversation)
    assert "/static/conversations/live.js" in conversation
    assert "/static/conversations/live.css" in conversation
    html = thread.content.decode()
    assert f'data-events-url="{_thread_url(sent)}"' in html
    assert 'data-after="1"' in html
    assert '<span class="live-state">created</span>' in html
