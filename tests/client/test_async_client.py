"""The asyncio client against a live server: the engine loop, follow, the heartbeat task,
tenant views and a retried 409 busy."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import httpx
import psycopg
import pytest
from ironclaw_client import AsyncClient, NotFound, RetryPolicy, usage_body
from ironclaw_client.models import Entry, Thread

from accounts.services import CreatedApiKey
from tests.client.conftest import TEST_RETRY, hold_row
from tests.support.locks import psycopg_params

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_async_engine_answers_a_user_who_follows_the_conversation(
    live_url: str, make_api_key: Callable[..., CreatedApiKey]
) -> None:
    user_key = make_api_key("alice").raw_key
    service_key = make_api_key(service=True).raw_key

    async def scenario() -> tuple[list[str], Entry, Thread, int, list[str]]:
        async with (
            AsyncClient(live_url, user_key, retry=TEST_RETRY) as user,
            AsyncClient(live_url, service_key, retry=TEST_RETRY) as engine,
        ):
            sent = await user.send_message("web", "hello")
            stop = asyncio.Event()
            followed: list[str] = []

            async def follow() -> None:
                async for entry in user.follow(sent["conversation_id"], wait_seconds=5, stop=stop):
                    followed.append(entry["content"])
                    if entry["sender"] == "agent":
                        stop.set()

            follower = asyncio.create_task(follow())
            claimed = await engine.next_thread("async-engine", wait_seconds=2)
            assert claimed is not None
            tenant = engine.for_user(claimed["user_id"])
            thread_id = claimed["thread"]["id"]
            await tenant.claim_thread(thread_id, "async-engine")
            async with tenant.keep_alive(thread_id, "async-engine", interval=0.1) as lease:
                await asyncio.sleep(0.4)
                inbox = await tenant.take_inbox(thread_id, "async-engine")
            await tenant.write_document(f"engine/.runtime/threads/{thread_id}.json", "{}")
            await tenant.record_outcome(
                thread_id,
                "async-engine",
                "completed",
                response="hi there",
                usage=usage_body(steps=1, input_tokens=2, output_tokens=3),
            )
            reply = await user.wait_for_reply(
                sent["conversation_id"], after_seq=sent["seq"], timeout=10
            )
            await asyncio.wait_for(follower, 10)
            thread = await user.get_thread(thread_id)
            tree = [entry["path"] async for entry in user.tree("engine")]
            conversations = [row["id"] async for row in user.conversations()]
            assert conversations == [sent["conversation_id"]]
            assert inbox == []
            return followed, reply, thread, lease.beats, tree

    followed, reply, thread, beats, tree = asyncio.run(scenario())

    assert followed == ["hello", "Thread started", "hi there"]
    assert reply["content"] == "hi there"
    assert (thread["state"], thread["input_tokens"], thread["output_tokens"]) == ("completed", 2, 3)
    assert beats >= 2
    assert tree == [f"engine/.runtime/threads/{thread['id']}.json"]


def test_an_async_tenant_view_cannot_read_another_tenants_document(
    live_url: str, make_api_key: Callable[..., CreatedApiKey]
) -> None:
    service_key = make_api_key(service=True).raw_key

    async def scenario() -> None:
        async with AsyncClient(live_url, service_key, retry=TEST_RETRY) as service:
            await service.for_user("bob").write_document("secret.md", "bob's")
            with pytest.raises(NotFound):
                await service.for_user("alice").read_document("secret.md")
            entries = [
                entry
                async for entry in service.for_user("bob").entries(
                    (await service.for_user("bob").send_message("web", "x"))["conversation_id"]
                )
            ]
            assert [entry["content"] for entry in entries] == ["x", "Thread started"]

    asyncio.run(scenario())


def test_an_async_claim_of_a_busy_thread_is_retried_until_the_lock_is_released(
    live_url: str, make_api_key: Callable[..., CreatedApiKey]
) -> None:
    key = make_api_key("alice").raw_key
    retry = RetryPolicy(max_attempts=20, max_seconds=20, base_delay=0.2, max_delay=0.5)

    claims: list[str] = []

    async def count(request: httpx.Request) -> None:
        if request.url.path.endswith("/claim"):
            claims.append(request.url.path)

    async def scenario() -> str:
        http = httpx.AsyncClient(base_url=live_url, event_hooks={"request": [count]})
        async with http, AsyncClient(live_url, key, retry=retry, http=http) as client:
            sent = await client.send_message("web", "hi")
            with psycopg.connect(**psycopg_params()) as holder:
                hold_row(holder, "conversations_thread", sent["thread_id"])
                releaser = threading.Timer(1.0, holder.rollback)
                releaser.start()
                thread = await client.claim_thread(sent["thread_id"], "engine-1")
                releaser.join()
            return thread["lease_owner"]

    assert asyncio.run(scenario()) == "engine-1"
    assert len(claims) >= 2
