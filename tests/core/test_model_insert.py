"""ModelInsert and ModelUpdate write the rows the ORM's save() writes, every column alike."""

from __future__ import annotations

import datetime
import uuid
from decimal import Decimal
from typing import Any

import pytest
from django.db import DatabaseError

from conversations.models import Conversation, Thread
from core.db import ModelInsert, ModelUpdate

pytestmark = pytest.mark.django_db


def _thread(conversation: Conversation) -> Thread:
    return Thread(
        user_id="alice",
        conversation=conversation,
        goal="ship it",
        enqueued_at=datetime.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.UTC),
        cost_usd=Decimal("0.125000"),
        metadata={"goal_entry_seqs": [1, 2], "note": "é \u200d"},
        model_calls=[{"step": 1}],
        start_seq=7,
    )


def _stored(thread_id: uuid.UUID) -> dict[str, Any]:
    row = Thread.objects.get(user_id="alice", pk=thread_id)
    differ = {"id", "conversation_id", "created_at", "updated_at"}
    return {
        field.attname: getattr(row, field.attname)
        for field in Thread._meta.concrete_fields
        if field.attname not in differ
    }


def test_the_row_is_the_one_the_orm_writes() -> None:
    # One tracked thread per conversation: two conversations alike.
    first = Conversation.objects.create(user_id="alice", channel="web")
    second = Conversation.objects.create(user_id="alice", channel="api")
    by_orm, written_once = _thread(first), _thread(second)

    by_orm.save(force_insert=True)
    ModelInsert(Thread).insert(written_once)

    assert _stored(written_once.pk) == _stored(by_orm.pk)
    assert not written_once._state.adding
    # auto_now_add/auto_now were filled in on the instance, as save() fills them in.
    assert written_once.created_at is not None
    assert written_once.updated_at is not None
    # The instance saves again as an existing row (an UPDATE, not a second INSERT).
    written_once.goal = "changed"
    written_once.save(update_fields=["goal"])
    assert Thread.objects.get(user_id="alice", pk=written_once.pk).goal == "changed"


def test_an_update_writes_what_save_writes_and_names_the_tenant() -> None:
    first = Conversation.objects.create(user_id="alice", channel="web")
    second = Conversation.objects.create(user_id="alice", channel="api")
    by_orm, written_once = _thread(first), _thread(second)
    by_orm.save(force_insert=True)
    ModelInsert(Thread).insert(written_once)
    for thread in (by_orm, written_once):
        thread.state = "running"
        thread.metadata = {**thread.metadata, "more": [1, 2.5, None]}
        thread.cost_usd += Decimal("1.5")
        thread.outcome = {"kind": "completed", "response": "done"}
    before = Thread.objects.get(user_id="alice", pk=written_once.pk).updated_at

    by_orm.save()
    ModelUpdate(Thread).update(written_once)

    assert _stored(written_once.pk) == _stored(by_orm.pk)
    assert Thread.objects.get(user_id="alice", pk=written_once.pk).updated_at > before
    # Another tenant's id, or a row gone, updates nothing and says so.
    written_once.user_id = "mallory"
    with pytest.raises(DatabaseError):
        ModelUpdate(Thread).update(written_once)
