"""PUT threads/{id}/checkpoint: an external engine's checkpoint, fenced by its lease's epoch."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from conversations.models import Thread
from conversations.services import message_handle, thread_claim, thread_leases_sweep
from engine.checkpoint import thread_checkpoint_path
from workspace.models import Document, DocumentVersion

pytestmark = pytest.mark.django_db

Tenant = Callable[[str], APIClient]


def _put(client: APIClient, thread_id: object, body: dict[str, object]) -> Any:
    return client.put(f"/api/v1/threads/{thread_id}/checkpoint", body, format="json")


def test_a_checkpoint_lands_under_its_lease_and_is_lease_lost_after_a_takeover(
    tenant_client: Tenant,
) -> None:
    alice = tenant_client("alice")
    sent = message_handle(user_id="alice", channel="web", content="go")
    claimed = alice.post(
        f"/api/v1/threads/{sent.thread_id}/claim", {"worker_id": "e1"}, format="json"
    ).json()
    mine = {"worker_id": "e1", "lease_epoch": claimed["claim_count"]}

    first = _put(alice, sent.thread_id, {**mine, "content": '{"step": 1}'})
    second = _put(alice, sent.thread_id, {**mine, "content": '{"step": 2}'})
    Thread.objects.filter(pk=sent.thread_id).update(
        lease_expires_at=timezone.now() - datetime.timedelta(seconds=1)
    )
    thread_leases_sweep()
    thread_claim(user_id="alice", thread_id=sent.thread_id, worker_id="e1")
    stale = _put(alice, sent.thread_id, {**mine, "content": '{"step": "stale"}'})

    assert first.status_code == second.status_code == 200
    assert second.json()["path"] == thread_checkpoint_path(sent.thread_id)
    assert second.json()["is_runtime"] is True
    assert stale.status_code == 409
    assert stale.json()["error"]["code"] == "lease_lost"
    assert stale.json()["error"]["details"]["lease_epoch"] == claimed["claim_count"] + 1
    document = Document.objects.get(path=thread_checkpoint_path(sent.thread_id))
    assert document.content == '{"step": 2}'
    assert not DocumentVersion.objects.exists()


def test_another_tenants_thread_is_a_404_and_bad_input_a_400_naming_the_field(
    tenant_client: Tenant,
) -> None:
    sent = message_handle(user_id="alice", channel="web", content="go")
    bob = tenant_client("bob")
    alice = tenant_client("alice")

    foreign = _put(bob, sent.thread_id, {"worker_id": "e1", "lease_epoch": 1, "content": "x"})
    missing = _put(alice, sent.thread_id, {"worker_id": "e1", "content": "x"})
    zero = _put(alice, sent.thread_id, {"worker_id": "e1", "lease_epoch": 0, "content": "x"})

    assert foreign.status_code == 404
    assert missing.status_code == zero.status_code == 400
    assert "lease_epoch" in missing.json()["error"]["details"]
    assert "lease_epoch" in zero.json()["error"]["details"]
    assert not Document.objects.exists()
