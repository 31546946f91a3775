"""The engine-facing thread API: threads/next, usage and timings, the entries long-poll."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.db import connection
from django.test import override_settings
from rest_framework.test import APIClient

from accounts.services import CreatedApiKey
from conversations.models import Thread
from conversations.services import message_handle, thread_claim
from tests.support.serve import call
from tests.support.servers import app_server, database_url, http_request
from workspace.models import DocumentVersion

EXTERNAL = "conversations.runners.wait_for_external_engine"


def _client(key: CreatedApiKey, user_id: str | None = None) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key.raw_key}")
    if user_id is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {key.raw_key}", HTTP_X_USER_ID=user_id)
    return client


@pytest.mark.django_db
def test_next_claims_the_oldest_waiting_thread_of_the_tenant_with_its_inbox(
    make_api_key: Callable[..., CreatedApiKey],
) -> None:
    older = message_handle(user_id="alice", channel="web", content="first")
    message_handle(user_id="bob", channel="web", content="not alice's")
    message_handle(user_id="alice", channel="cli", content="second")
    client = _client(make_api_key("alice"))

    response = client.post("/api/v1/threads/next", {"worker_id": "e1"}, format="json")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["user_id"] == "alice"
    assert body["thread"]["id"] == str(older.thread_id)
    assert (body["thread"]["state"], body["thread"]["lease_owner"]) == ("running", "e1")
    assert body["thread"]["goal"] == "first"
    assert body["inbox"] == []


@pytest.mark.django_db
def test_next_hands_a_resumed_thread_its_new_message(
    make_api_key: Callable[..., CreatedApiKey],
) -> None:
    sent = message_handle(user_id="alice", channel="web", content="start")
    thread_claim(user_id="alice", thread_id=sent.thread_id, worker_id="e0")
    Thread.objects.filter(pk=sent.thread_id).update(
        state="suspended", lease_owner="", lease_expires_at=None
    )
    message_handle(user_id="alice", channel="web", content="wake up")

    response = _client(make_api_key("alice")).post(
        "/api/v1/threads/next", {"worker_id": "e1"}, format="json"
    )

    assert response.status_code == 200
    assert [entry["content"] for entry in response.json()["inbox"]] == ["wake up"]


@pytest.mark.django_db
def test_next_is_204_when_nothing_waits_and_refuses_bad_input(
    make_api_key: Callable[..., CreatedApiKey],
) -> None:
    client = _client(make_api_key("alice"))

    idle = client.post("/api/v1/threads/next", {"worker_id": "e1"}, format="json")
    too_long = client.post(
        "/api/v1/threads/next", {"worker_id": "e1", "wait_seconds": 31}, format="json"
    )
    no_worker = client.post("/api/v1/threads/next", {}, format="json")

    assert idle.status_code == 204
    assert too_long.status_code == 400
    assert "wait_seconds" in too_long.json()["error"]["details"]
    assert no_worker.status_code == 400
    assert "worker_id" in no_worker.json()["error"]["details"]


@pytest.mark.django_db
def test_a_service_key_without_a_tenant_serves_every_tenant_only_on_next(
    make_api_key: Callable[..., CreatedApiKey],
) -> None:
    sent = message_handle(user_id="bob", channel="web", content="hello")
    service = _client(make_api_key(service=True))

    claimed = service.post("/api/v1/threads/next", {"worker_id": "e1"}, format="json")
    elsewhere = service.get(f"/api/v1/threads/{sent.thread_id}")

    assert claimed.status_code == 200
    assert claimed.json()["user_id"] == "bob"
    assert elsewhere.status_code == 400
    assert elsewhere.json()["error"]["code"] == "missing_user_id"


@pytest.mark.django_db
def test_usage_reported_on_heartbeat_and_outcome_adds_up_on_the_thread(
    make_api_key: Callable[..., CreatedApiKey],
) -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")
    client = _client(make_api_key("alice"))
    client.post(f"/api/v1/threads/{sent.thread_id}/claim", {"worker_id": "e1"}, format="json")
    usage = {
        "steps": 1,
        "input_tokens": 10,
        "output_tokens": 5,
        "cost_usd": "0.01",
        "model_ms": 200,
    }

    beat = client.post(
        f"/api/v1/threads/{sent.thread_id}/heartbeat",
        {"worker_id": "e1", "usage": usage},
        format="json",
    )
    done = client.post(
        f"/api/v1/threads/{sent.thread_id}/outcome",
        {"worker_id": "e1", "kind": "completed", "response": "hi", "usage": usage},
        format="json",
    )
    negative = client.post(
        f"/api/v1/threads/{sent.thread_id}/heartbeat",
        {"worker_id": "e1", "usage": {"steps": -1}},
        format="json",
    )

    assert beat.status_code == 200
    assert beat.json()["input_tokens"] == 10
    thread = done.json()["thread"]
    assert (thread["step_count"], thread["input_tokens"], thread["output_tokens"]) == (2, 20, 10)
    assert (thread["tokens_used"], thread["model_time_ms"]) == (30, 400)
    assert thread["cost_usd"] == 0.02
    assert thread["claimed_at"] is not None
    assert negative.status_code == 400
    assert "usage" in negative.json()["error"]["details"]


@pytest.mark.django_db
def test_a_service_key_is_recorded_as_the_author_of_a_version(
    make_api_key: Callable[..., CreatedApiKey],
) -> None:
    service = _client(make_api_key(service=True, name="bridge"), user_id="alice")
    service.put("/api/v1/workspace/documents/notes.md", {"content": "one"}, format="json")

    service.put("/api/v1/workspace/documents/notes.md", {"content": "two"}, format="json")

    version = DocumentVersion.objects.get(document__user_id="alice", document__path="notes.md")
    assert version.changed_by.startswith("service key bridge (#")


@pytest.mark.django_db(transaction=True)
@override_settings(THREAD_RUNNER=EXTERNAL)
def test_next_never_hands_one_thread_to_two_engines_racing_in_processes(
    make_api_key: Callable[..., CreatedApiKey],
) -> None:
    spawned = {
        str(message_handle(user_id=f"tenant-{n}", channel="web", content="go").thread_id)
        for n in range(40)
    }
    key = make_api_key(service=True).raw_key
    env = {"DATABASE_URL": database_url(connection.settings_dict), "THREAD_RUNNER": EXTERNAL}
    with app_server(env, threads=8) as base:
        claimers = [
            subprocess.Popen(
                [sys.executable, "-m", "tests.engine.next_claimer", base, key, f"engine-{n}"],
                cwd=settings.BASE_DIR,
                env={**os.environ, **env},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for n in range(4)
        ]
        for claimer in claimers:
            assert claimer.stdout is not None
            assert claimer.stdout.readline().strip() == "ready"
        for claimer in claimers:
            assert claimer.stdin is not None
            claimer.stdin.write("go\n")
            claimer.stdin.flush()
        outputs = [claimer.communicate(timeout=60)[0] for claimer in claimers]

    claims = [claim for output in outputs for claim in json.loads(output.strip().splitlines()[-1])]
    claimed_ids = [claim["thread_id"] for claim in claims]
    assert len(claimed_ids) == len(set(claimed_ids)) == 40
    assert set(claimed_ids) == spawned
    owners = dict(Thread.objects.values_list("id", "lease_owner"))
    assert {owners[uuid_value] for uuid_value in owners} <= {f"engine-{n}" for n in range(4)}


@pytest.mark.django_db(transaction=True)
def test_the_entries_long_poll_answers_soon_after_a_reply_commits(
    make_api_key: Callable[..., CreatedApiKey],
) -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")
    thread_claim(user_id="alice", thread_id=sent.thread_id, worker_id="e1")
    key = make_api_key("alice").raw_key
    env = {
        "DATABASE_URL": database_url(connection.settings_dict),
        "THREAD_RUNNER": EXTERNAL,
        # Far above the bound below: only the commit's notification can answer in time.
        "NOTIFY_FALLBACK_POLL_SECONDS": "60",
    }
    url = f"/api/v1/conversations/{sent.conversation_id}/entries?after_seq=2&wait_seconds=20"
    with app_server(env, threads=4) as base:
        answered: dict[str, object] = {}

        def poll() -> None:
            result = http_request(base + url, headers={"Authorization": f"Bearer {key}"})
            answered["at"] = time.monotonic()
            answered["body"] = result.body

        poller = threading.Thread(target=poll)
        poller.start()
        time.sleep(1.0)
        assert "at" not in answered, "the long-poll answered before any entry existed"
        from conversations.services import ThreadOutcome, thread_outcome_record

        thread_outcome_record(
            user_id="alice",
            thread_id=sent.thread_id,
            outcome=ThreadOutcome(kind="completed", response="the reply"),
            worker_id="e1",
        )
        committed = time.monotonic()
        poller.join(timeout=10)

    assert [entry["content"] for entry in answered["body"]["results"]] == ["the reply"]  # type: ignore[index]
    # Woken by the commit's notification: the fallback poll is a minute.
    assert answered["at"] - committed < 0.5  # type: ignore[operator]


def _hang_up_mid_long_poll(base: str, key: str, body: dict[str, object]) -> None:
    """Send POST threads/next as an engine would, then die (close the socket) while it waits."""
    address = urlsplit(base)
    payload = json.dumps(body).encode()
    with socket.create_connection((address.hostname, address.port), timeout=5) as sock:
        sock.sendall(
            b"POST /api/v1/threads/next HTTP/1.1\r\n"
            + f"Host: {address.hostname}\r\nAuthorization: Bearer {key}\r\n".encode()
            + f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        time.sleep(0.5)


@pytest.mark.django_db(transaction=True)
def test_a_next_long_poll_whose_engine_died_claims_nothing_for_it(
    make_api_key: Callable[..., CreatedApiKey],
) -> None:
    key = make_api_key(service=True).raw_key
    env = {"DATABASE_URL": database_url(connection.settings_dict), "THREAD_RUNNER": EXTERNAL}
    with app_server(env, threads=4) as base:
        _hang_up_mid_long_poll(base, key, {"worker_id": "dead-engine", "wait_seconds": 20})
        time.sleep(0.3)
        # The commit's notification wakes the dead engine's wait first.
        sent = message_handle(user_id="alice", channel="web", content="anyone there?")
        time.sleep(1.5)
        left = Thread.objects.get(id=sent.thread_id)
        assert (left.state, left.lease_owner) == ("created", "")

        status, claimed = call(
            base,
            key,
            "POST",
            "/api/v1/threads/next",
            {"worker_id": "live-engine", "wait_seconds": 5},
        )

    assert status == 200
    assert claimed["thread"]["id"] == str(sent.thread_id)
    assert Thread.objects.get(id=sent.thread_id).lease_owner == "live-engine"
