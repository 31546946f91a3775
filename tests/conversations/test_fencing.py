"""Fenced leases: a write that names the lease epoch it claimed (the claim's ``claim_count``) is
refused with ``lease_lost`` once anyone has claimed the thread since, even under the same
worker id; the engine's checkpoints are fenced in their one statement."""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from conversations.models import ConversationEntry, Thread
from conversations.services import (
    LEASE_FENCE_SQL,
    lease_fence_params,
    message_handle,
    thread_claim,
    thread_leases_sweep,
)
from workspace.errors import WriteFenced
from workspace.models import Document
from workspace.services import WriteFence, document_write

Tenant = Callable[[str], APIClient]
PATH = "engine/.runtime/threads/t.json"


def _taken_over(thread_id: Any, worker_id: str = "w1") -> int:
    """The thread's lease lapses while ``worker_id`` holds it; the sweeper releases it and the
    same worker id claims it again. Returns the new epoch."""
    Thread.objects.filter(pk=thread_id).update(
        lease_expires_at=timezone.now() - datetime.timedelta(seconds=1)
    )
    thread_leases_sweep()
    return thread_claim(user_id="alice", thread_id=thread_id, worker_id=worker_id).claim_count


def _fence(thread_id: Any, epoch: int) -> WriteFence:
    return WriteFence(LEASE_FENCE_SQL, lease_fence_params(thread_id, epoch, user_id="alice"))


@pytest.mark.django_db
def test_a_fenced_runtime_write_lands_under_its_epoch_and_is_refused_after_a_takeover() -> None:
    sent = message_handle(user_id="alice", channel="web", content="go")
    epoch = thread_claim(user_id="alice", thread_id=sent.thread_id, worker_id="w1").claim_count
    first = _fence(sent.thread_id, epoch)

    with CaptureQueriesContext(connection) as statements:
        document_write(user_id="alice", path=PATH, content="step 1", fence=first)
    document_write(user_id="alice", path=PATH, content="step 1", fence=first)  # unchanged
    new_epoch = _taken_over(sent.thread_id)
    document_write(
        user_id="alice", path=PATH, content="successor", fence=_fence(sent.thread_id, new_epoch)
    )
    with pytest.raises(WriteFenced) as refused:
        document_write(user_id="alice", path=PATH, content="stale step 2", fence=first)
    with pytest.raises(WriteFenced):
        document_write(user_id="alice", path="engine/.runtime/new.json", content="x", fence=first)

    assert len(statements) == 1
    assert (refused.value.status_code, refused.value.code) == (409, "write_fenced")
    assert new_epoch == epoch + 1
    assert Document.objects.get(path=PATH).content == "successor"
    assert not Document.objects.filter(path="engine/.runtime/new.json").exists()


@pytest.mark.django_db
def test_a_fenced_write_to_a_versioned_document_is_refused_too() -> None:
    sent = message_handle(user_id="alice", channel="web", content="go")
    epoch = thread_claim(user_id="alice", thread_id=sent.thread_id, worker_id="w1").claim_count
    document_write(
        user_id="alice", path="notes.md", content="mine", fence=_fence(sent.thread_id, epoch)
    )
    _taken_over(sent.thread_id)

    with pytest.raises(WriteFenced):
        document_write(
            user_id="alice", path="notes.md", content="stale", fence=_fence(sent.thread_id, epoch)
        )

    assert Document.objects.get(path="notes.md").content == "mine"


@pytest.mark.django_db(transaction=True)
def test_a_takeover_waits_for_a_fenced_write_in_flight() -> None:
    """The fence locks the thread row FOR SHARE: a claim that takes the thread over waits for
    the write's commit, so a write is either before the takeover (and the successor reads it)
    or refused."""
    sent = message_handle(user_id="alice", channel="web", content="go")
    epoch = thread_claim(user_id="alice", thread_id=sent.thread_id, worker_id="w1").claim_count
    Thread.objects.filter(pk=sent.thread_id).update(
        lease_expires_at=timezone.now() - datetime.timedelta(seconds=1)
    )
    params = {k: v for k, v in connection.get_connection_params().items() if k != "context"}
    claimed: list[int] = []
    with psycopg.connect(**params) as writer:
        writer.execute(
            LEASE_FENCE_SQL, lease_fence_params(sent.thread_id, epoch, user_id="alice")
        )  # a write's fence, its transaction still open

        def take_over() -> None:
            try:
                claimed.append(
                    thread_claim(
                        user_id="alice", thread_id=sent.thread_id, worker_id="w2"
                    ).claim_count
                )
            finally:
                connection.close()

        taker = threading.Thread(target=take_over)
        taker.start()
        taker.join(1.0)
        assert taker.is_alive(), "the takeover did not wait for the write in flight"
        writer.commit()
    taker.join(10)

    assert claimed == [epoch + 1]


@pytest.mark.django_db
def test_engine_writes_with_a_stale_epoch_are_lease_lost(tenant_client: Tenant) -> None:
    alice = tenant_client("alice")
    sent = message_handle(user_id="alice", channel="web", content="go")
    claim = alice.post(
        f"/api/v1/threads/{sent.thread_id}/claim", {"worker_id": "w1"}, format="json"
    ).json()
    epoch = claim["claim_count"]
    message_handle(user_id="alice", channel="web", content="more")
    url = f"/api/v1/threads/{sent.thread_id}"
    stale = {"worker_id": "w1", "lease_epoch": epoch}

    held = alice.post(f"{url}/heartbeat", stale, format="json")
    new_epoch = _taken_over(sent.thread_id)
    answers = {
        "heartbeat": alice.post(f"{url}/heartbeat", stale, format="json"),
        "inbox": alice.post(f"{url}/inbox", stale, format="json"),
        "suspend": alice.post(f"{url}/suspend", stale, format="json"),
        "outcome": alice.post(
            f"{url}/outcome", {**stale, "kind": "completed", "response": "late"}, format="json"
        ),
    }
    current = alice.post(
        f"{url}/heartbeat", {"worker_id": "w1", "lease_epoch": new_epoch}, format="json"
    )

    assert held.status_code == 200
    for name, answer in answers.items():
        assert answer.status_code == 409, name
        assert answer.json()["error"]["code"] == "lease_lost", name
        assert answer.json()["error"]["details"]["lease_epoch"] == new_epoch, name
    assert current.status_code == 200
    thread = Thread.objects.get(pk=sent.thread_id)
    assert (thread.state, thread.outcome) == ("running", None)
    assert not ConversationEntry.objects.filter(sender="agent").exists()
    assert ConversationEntry.objects.get(content="more").delivered_at is None


@pytest.mark.django_db
def test_an_outcome_with_a_stale_epoch_is_refused_after_the_sweep_released_the_lease(
    tenant_client: Tenant,
) -> None:
    """Without the epoch, a failed or stopped outcome is accepted from anyone once the sweeper
    has released the thread; with it, only under the lease the writer claimed."""
    alice = tenant_client("alice")
    sent = message_handle(user_id="alice", channel="web", content="go")
    epoch = thread_claim(user_id="alice", thread_id=sent.thread_id, worker_id="w1").claim_count
    Thread.objects.filter(pk=sent.thread_id).update(
        lease_expires_at=timezone.now() - datetime.timedelta(seconds=1)
    )
    thread_leases_sweep()

    late = alice.post(
        f"/api/v1/threads/{sent.thread_id}/outcome",
        {"worker_id": "w1", "lease_epoch": epoch, "kind": "failed", "error": "late"},
        format="json",
    )

    assert late.status_code == 409
    assert late.json()["error"]["code"] == "lease_lost"
    assert Thread.objects.get(pk=sent.thread_id).state == "created"


@pytest.mark.django_db
def test_a_bad_lease_epoch_is_a_400_naming_it(tenant_client: Tenant) -> None:
    alice = tenant_client("alice")
    sent = message_handle(user_id="alice", channel="web", content="go")

    answers = [
        alice.post(
            f"/api/v1/threads/{sent.thread_id}/heartbeat",
            {"worker_id": "w1", "lease_epoch": value},
            format="json",
        )
        for value in (0, -1, "x", 2**31)
    ]

    assert [answer.status_code for answer in answers] == [400] * 4
    assert all("lease_epoch" in answer.json()["error"]["details"] for answer in answers)
