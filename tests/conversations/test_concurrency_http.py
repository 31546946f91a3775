from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection

from accounts.services import CreatedApiKey
from tests.conversations.concurrency import (
    assert_exactly_one_thread_took_every_message,
)
from tests.support.concurrency import run_together
from tests.support.servers import app_server, database_url

pytestmark = pytest.mark.django_db(transaction=True)


def _post(url: str, key: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _sender(url: str, key: str, content: str) -> Callable[[], tuple[int, Any]]:
    return lambda: _post(url, key, {"channel": "web", "content": content})


def test_engine_flow_and_racing_messages_over_http(
    make_api_key: Callable[..., CreatedApiKey],
) -> None:
    key = make_api_key("alice").raw_key
    env = {
        "DATABASE_URL": database_url(connection.settings_dict),
        "DATABASE_POOL_SIZE": "8",
        "CONVERSATION_LOCK_TIMEOUT_MS": "20000",
    }
    contents = [f"http message {n}" for n in range(8)]

    with app_server(env, threads=8) as base:
        api = f"{base}/api/v1"
        sent = run_together([_sender(f"{api}/messages", key, content) for content in contents])
        statuses = [status for status, _ in sent[0]]
        assert statuses == [202] * len(contents), sent
        assert_exactly_one_thread_took_every_message(
            user_id="alice",
            channel="web",
            contents=contents,
            actions=[body["action"] for _, body in sent[0]],
        )
        thread_id = sent[0][0][1]["thread_id"]
        claim = _post(f"{api}/threads/{thread_id}/claim", key, {"worker_id": "w1"})
        inbox = _post(f"{api}/threads/{thread_id}/inbox", key, {"worker_id": "w1"})
        late = _post(f"{api}/messages", key, {"channel": "web", "content": "after the inbox"})
        outcome = _post(
            f"{api}/threads/{thread_id}/outcome",
            key,
            {"kind": "completed", "response": "done", "worker_id": "w1"},
        )

    assert sent[1] == []
    assert claim[0] == 200
    assert len(inbox[1]["entries"]) == len(contents) - 1
    assert late[1]["action"] == "injected"
    assert outcome[0] == 200
    assert outcome[1]["follow_up_thread"]["goal"] == "after the inbox"
