"""The reads written as SQL once (for speed) find exactly what their ORM queries find, over every
combination of the columns they filter on: the two must stay in step."""

from __future__ import annotations

import datetime
import itertools

import pytest
from django.db import connection
from django.db.models import Max
from django.utils import timezone

from conversations.models import ConversationEntry, EntrySender, Thread, ThreadKind, ThreadState
from conversations.services.lifecycle import _QUEUED
from conversations.services.messages import _LIVE_THREAD
from core.db import fixed_exists
from engine.reads import NEWEST_UNDELIVERED_SQL, UNDELIVERED_SQL
from tests.conversations.factories import ConversationFactory, EntryFactory, ThreadFactory

pytestmark = pytest.mark.django_db

LIVE = {ThreadState.CREATED, ThreadState.RUNNING, ThreadState.WAITING, ThreadState.SUSPENDED}


@pytest.mark.parametrize(
    ("state", "tracked", "kind"),
    [
        (state, tracked, kind)
        for state, tracked, kind in itertools.product(
            ThreadState.values, (True, False), ThreadKind.values
        )
        # The database refuses a tracked thread that is not live.
        if state in LIVE or not tracked
    ],
)
def test_the_live_thread_read_matches_the_orm(state: str, tracked: bool, kind: str) -> None:
    thread = ThreadFactory.create(
        state=state,
        tracked=tracked,
        kind=kind,
        lease_owner="w" if state == ThreadState.RUNNING else "",
        lease_expires_at=timezone.now() if state == ThreadState.RUNNING else None,
    )
    orm = (
        Thread.objects.tracked_foreground().filter(conversation=thread.conversation).live().first()
    )

    fixed = _LIVE_THREAD.first([thread.user_id, thread.conversation_id])

    assert (fixed and fixed.pk) == (orm and orm.pk)


def test_the_queued_and_undelivered_reads_match_the_orm() -> None:
    conversation = ConversationFactory.create()
    thread = ThreadFactory.create(conversation=conversation)
    for sender, with_thread, delivered in itertools.product(
        EntrySender.values, (True, False), (True, False)
    ):
        EntryFactory.create(
            conversation=conversation,
            sender=sender,
            thread=thread if with_thread else None,
            delivered_at=timezone.now() if delivered else None,
        )

    queued = _QUEUED.all([conversation.user_id, conversation.id])
    undelivered = fixed_exists(UNDELIVERED_SQL, [thread.user_id, thread.id])

    assert [entry.pk for entry in queued] == list(
        ConversationEntry.objects.filter(conversation=conversation)
        .queued()
        .order_by("seq")
        .values_list("pk", flat=True)
    )
    assert len(queued) == 1
    assert undelivered is ConversationEntry.objects.undelivered_for(thread).exists() is True
    ConversationEntry.objects.undelivered_for(thread).update(delivered_at=timezone.now())
    assert fixed_exists(UNDELIVERED_SQL, [thread.user_id, thread.id]) is False


def test_the_newest_undelivered_read_matches_the_orm() -> None:
    conversation = ConversationFactory.create()
    thread = ThreadFactory.create(conversation=conversation)
    long_ago = timezone.now() - datetime.timedelta(hours=1)
    for sender, with_thread, delivered in itertools.product(
        EntrySender.values, (True, False), (True, False)
    ):
        EntryFactory.create(
            conversation=conversation,
            sender=sender,
            thread=thread if with_thread else None,
            delivered_at=timezone.now() if delivered else None,
            # Only the one undelivered user message for the thread is old: the read must find it.
            created_at=long_ago
            if (sender, with_thread, delivered) == (EntrySender.USER, True, False)
            else timezone.now(),
        )

    with connection.cursor() as cursor:
        cursor.execute(NEWEST_UNDELIVERED_SQL, [thread.user_id, thread.id])
        (newest,) = cursor.fetchone()

    orm = ConversationEntry.objects.undelivered_for(thread).aggregate(newest=Max("created_at"))
    assert newest == orm["newest"] == long_ago
