"""The API's event streams live, through the production web server (in a thread) and this
process's stream hub: what a client sees as things happen, and a revoked key's streams ending."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.wsgi import get_wsgi_application
from django.utils import timezone

from accounts.models import ApiKey
from accounts.services import CreatedApiKey
from conversations.services import message_handle
from core import notify, streams
from tests.support.event_streams import StreamClient, eventually, web_server_thread

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def api_port() -> Iterator[int]:
    with web_server_thread(get_wsgi_application()) as port:
        yield port
    streams.shutdown()
    streams._hub = None
    notify.listener_stop()


def _events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for block in raw.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
        if "event" in fields:
            found.append((fields["event"], json.loads(fields["data"])))
    return found


def _stream(port: int, key: CreatedApiKey, conversation_id: Any) -> StreamClient:
    client = StreamClient(
        port,
        path=f"/api/v1/conversations/{conversation_id}/events",
        headers={"Authorization": f"Bearer {key.raw_key}"},
    )
    client.read_head()
    assert client.status == 200
    assert client.headers["Content-Type"].startswith("text/event-stream")
    return client


def test_a_message_reaches_an_open_stream_as_it_commits(
    api_port: int, make_api_key: Callable[..., CreatedApiKey]
) -> None:
    key = make_api_key("alice")
    first = message_handle(user_id="alice", channel="web", content="first")
    client = _stream(api_port, key, first.conversation_id)
    eventually(lambda: streams.hub().open_count == 1)
    message_handle(user_id="alice", channel="web", content="while you watch")
    seen = client.read_until(b"while you watch")
    assert ("entry", "while you watch") in [
        (event, data.get("content")) for event, data in _events(seen)
    ]
    client.close()


def test_revoking_a_key_ends_its_open_streams(
    api_port: int, make_api_key: Callable[..., CreatedApiKey]
) -> None:
    """A stream authenticated once, when it opened: revoking its key ends it in every process
    (a trigger notifies), rather than letting it run to its lifetime."""
    key = make_api_key("alice")
    other = make_api_key("alice", name="other")
    sent = message_handle(user_id="alice", channel="web", content="hello")
    revoked_client = _stream(api_port, key, sent.conversation_id)
    kept_client = _stream(api_port, other, sent.conversation_id)
    eventually(lambda: streams.hub().open_count == 2)

    ApiKey.objects.filter(pk=key.api_key.pk).update(revoked_at=timezone.now())

    assert revoked_client.at_eof()
    eventually(lambda: streams.hub().open_count == 1)
    message_handle(user_id="alice", channel="web", content="after the revocation")
    assert b"after the revocation" in kept_client.read_until(b"after the revocation")
    revoked_client.close()
    kept_client.close()
