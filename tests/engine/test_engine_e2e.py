"""Turns end to end: the real web server and turn workers in their own processes, a real model
server on loopback, and clients that only speak HTTP."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from accounts.services import CreatedApiKey
from conversations.models import ConversationEntry, Thread
from tests.support.chat_server import ChatServer, chat_server
from tests.support.serve import call
from tests.support.servers import app_server, database_url, worker_process
from workspace.models import Chunk, Document, DocumentVersion

pytestmark = pytest.mark.django_db(transaction=True)


def _agent_reply(base: str, key: str, conversation_id: str, *, timeout: float = 30) -> dict:
    """Long-poll the conversation's entries until an agent entry appears."""
    after = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, page = call(
            base,
            key,
            "GET",
            f"/api/v1/conversations/{conversation_id}/entries?after_seq={after}&wait_seconds=10",
        )
        assert status == 200, page
        for entry in page["results"]:
            after = entry["seq"]
            if entry["sender"] == "agent":
                return entry
    raise AssertionError(f"no agent reply in {conversation_id} within {timeout} s")


@contextmanager
def _service(
    env: dict[str, str], *, concurrency: int = 4, web_threads: int = 8
) -> Iterator[tuple[str, Any]]:
    full = {"DATABASE_URL": database_url(connection.settings_dict), **env}
    with ExitStack() as stack:
        base = stack.enter_context(app_server(full, threads=web_threads))
        worker = stack.enter_context(worker_process(full, concurrency=concurrency))
        yield base, worker


def _openai_env(server: ChatServer, **extra: str) -> dict[str, str]:
    return {
        "ENGINE_MODEL": "openai",
        "ENGINE_BASE_URL": server.url,
        "ENGINE_API_KEY": "test-key",
        "ENGINE_MODEL_MAX_RETRIES": "0",
        "ENGINE_HEARTBEAT_SECONDS": "0.2",
        **extra,
    }


def test_a_message_is_answered_by_the_echo_agent(
    make_api_key: Callable[..., CreatedApiKey],
) -> None:
    key = make_api_key("alice").raw_key
    with _service({"ENGINE_MODEL": "echo", "ENGINE_ECHO_LATENCY_MS": "50"}) as (base, _):
        status, sent = call(
            base, key, "POST", "/api/v1/messages", {"channel": "web", "content": "hi"}
        )
        assert status == 202, sent

        reply = _agent_reply(base, key, sent["conversation_id"])
        status, thread = call(base, key, "GET", f"/api/v1/threads/{sent['thread_id']}")

    assert reply["content"] == "echo: hi"
    assert reply["thread_id"] == sent["thread_id"]
    assert status == 200
    assert thread["state"] == "completed"
    assert thread["step_count"] == 1
    assert thread["model_time_ms"] >= 50
    assert thread["claimed_at"]
    assert thread["enqueued_at"]
    assert thread["finished_at"]
    checkpoints = Document.objects.filter(user_id="alice", path__startswith="engine/.runtime/")
    assert checkpoints.count() == 2
    assert not DocumentVersion.objects.filter(document__in=checkpoints).exists()
    assert not Chunk.objects.filter(document__in=checkpoints).exists()


def test_a_message_sent_mid_turn_is_taken_by_the_same_turn(
    make_api_key: Callable[..., CreatedApiKey],
) -> None:
    key = make_api_key("alice").raw_key
    with chat_server() as model, _service(_openai_env(model)) as (base, _):
        model.gate.clear()
        _, first = call(base, key, "POST", "/api/v1/messages", {"channel": "web", "content": "m1"})
        model.wait_for_requests(1)
        status, second = call(
            base, key, "POST", "/api/v1/messages", {"channel": "web", "content": "m2"}
        )
        model.gate.set()

        reply = _agent_reply(base, key, first["conversation_id"])

    assert (status, second["action"], second["thread_id"]) == (202, "injected", first["thread_id"])
    assert reply["content"] == "reply to: m1\n\nreply to: m2"
    assert model.last_user_messages() == ["m1", "m2"]
    assert ConversationEntry.objects.filter(sender="agent").count() == 1


def test_interrupt_stops_a_running_turn(make_api_key: Callable[..., CreatedApiKey]) -> None:
    key = make_api_key("alice").raw_key
    with chat_server() as model, _service(_openai_env(model)) as (base, _):
        model.gate.clear()
        _, first = call(base, key, "POST", "/api/v1/messages", {"channel": "web", "content": "m1"})
        conversation = first["conversation_id"]
        call(
            base,
            key,
            "POST",
            f"/api/v1/conversations/{conversation}/policy",
            {"busy_policy": "interrupt"},
        )
        model.wait_for_requests(1)
        _, second = call(base, key, "POST", "/api/v1/messages", {"channel": "web", "content": "m2"})
        deadline = time.monotonic() + 10
        while Thread.objects.get(pk=first["thread_id"]).state != "stopped":
            assert time.monotonic() < deadline, "the interrupted turn did not stop"
            time.sleep(0.05)
        model.gate.set()

        reply = _agent_reply(base, key, conversation)

    assert second["interrupted_thread_id"] == first["thread_id"]
    assert reply["content"] == "reply to: m2"
    assert reply["thread_id"] == second["thread_id"]
    assert ConversationEntry.objects.filter(sender="agent").count() == 1


def test_a_worker_killed_mid_turn_is_replaced_and_the_turn_resumes_from_its_checkpoint(
    make_api_key: Callable[..., CreatedApiKey],
) -> None:
    key = make_api_key("alice").raw_key
    with chat_server() as model:
        env = _openai_env(model, ENGINE_LEASE_SECONDS="2", ENGINE_HEARTBEAT_SECONDS="0.3")
        full = {"DATABASE_URL": database_url(connection.settings_dict), **env}
        with app_server(full) as base:
            with worker_process(full) as doomed:
                model.gate.clear()
                _, first = call(
                    base, key, "POST", "/api/v1/messages", {"channel": "web", "content": "m1"}
                )
                model.wait_for_requests(1)
                call(base, key, "POST", "/api/v1/messages", {"channel": "web", "content": "m2"})
                # Step 1 answers and is checkpointed; step 2 (m2) is in flight when we kill.
                model.gate.set()
                model.wait_for_requests(2)
                model.gate.clear()
                doomed.send_signal(signal.SIGKILL)
                doomed.wait(timeout=10)
            deadline = time.monotonic() + 10
            while Thread.objects.get(pk=first["thread_id"]).lease_expires_at > timezone.now():  # type: ignore[operator]
                assert time.monotonic() < deadline
                time.sleep(0.1)
            model.gate.set()

            # Nobody here sweeps: the new worker's own lease sweep gives the expired lease back.
            with worker_process(full):
                reply = _agent_reply(base, key, first["conversation_id"])

    # m1's step was checkpointed before the kill, so it is never sent again; m2's was in flight.
    assert model.last_user_messages() == ["m1", "m2", "m2"]
    assert reply["content"] == "reply to: m1\n\nreply to: m2"
    assert ConversationEntry.objects.filter(sender="agent").count() == 1
    thread = Thread.objects.get(pk=first["thread_id"])
    assert (thread.state, thread.claim_count) == ("completed", 2)


def test_thirty_tenants_turns_run_in_parallel(make_api_key: Callable[..., CreatedApiKey]) -> None:
    tenants = 30
    keys = [make_api_key(f"tenant-{n}").raw_key for n in range(tenants)]
    # Each model call waits until all thirty are in flight at once: only parallel turns pass.
    with (
        chat_server(hold_until_in_flight=tenants, hold_timeout=30) as model,
        _service(_openai_env(model), concurrency=32, web_threads=40) as (base, _),
    ):

        def converse(n: int) -> Callable[[], str]:
            def run() -> str:
                _, sent = call(
                    base,
                    keys[n],
                    "POST",
                    "/api/v1/messages",
                    {"channel": "web", "content": f"hello from {n}"},
                )
                return str(
                    _agent_reply(base, keys[n], sent["conversation_id"], timeout=60)["content"]
                )

            return run

        # Plain threads: the clients speak HTTP only and need no database connection.
        with ThreadPoolExecutor(max_workers=tenants) as pool:
            replies = list(pool.map(lambda run: run(), [converse(n) for n in range(tenants)]))

    assert model.max_in_flight == tenants
    assert sorted(replies) == sorted(f"reply to: hello from {n}" for n in range(tenants))
