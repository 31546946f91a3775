"""An operator's stop racing with the engine's outcome: exactly one of them ends the thread."""

from __future__ import annotations

import datetime
from functools import partial

import pytest
from django.test import override_settings
from django.utils import timezone

from conversations.errors import LeaseNotHeld, OutcomeAlreadyRecorded
from conversations.models import ConversationEntry, Thread
from conversations.services import (
    ThreadOutcome,
    message_handle,
    thread_claim,
    thread_outcome_record,
    thread_requeue,
    thread_stop,
)
from tests.conversations.helpers import waiting_for_a_worker
from tests.support.concurrency import run_together

pytestmark = pytest.mark.django_db(transaction=True)


@override_settings(CONVERSATION_LOCK_TIMEOUT_MS=20_000)
def test_stop_racing_with_the_outcome_ends_the_thread_once() -> None:
    for attempt in range(5):
        sent = message_handle(user_id="alice", channel=f"web-{attempt}", content="hello")
        thread_id = sent.thread_id
        thread_claim(user_id="alice", thread_id=thread_id, worker_id="w1")

        results, errors = run_together(
            [
                partial(thread_stop, user_id="alice", thread_id=thread_id),
                partial(
                    thread_outcome_record,
                    user_id="alice",
                    thread_id=thread_id,
                    worker_id="w1",
                    outcome=ThreadOutcome(kind="completed", response="answer"),
                ),
            ]
        )

        thread = Thread.objects.get(pk=thread_id)
        endings = ConversationEntry.objects.filter(
            thread=thread, content__in=["answer", "Thread stopped by an operator"]
        )
        assert thread.state in ("stopped", "completed")
        assert endings.count() == 1
        assert len(results) + len(errors) == 2
        # The loser either saw a finished thread (stop skipped) or a stopped one (outcome 409).
        assert all(isinstance(error, (LeaseNotHeld, OutcomeAlreadyRecorded)) for error in errors)


@override_settings(CONVERSATION_LOCK_TIMEOUT_MS=20_000)
def test_concurrent_requeues_return_the_thread_to_the_queue_once() -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")
    thread_claim(user_id="alice", thread_id=sent.thread_id, worker_id="crashed")
    Thread.objects.filter(pk=sent.thread_id).update(
        lease_expires_at=timezone.now() - datetime.timedelta(seconds=5)
    )

    results, errors = run_together(
        [lambda: thread_requeue(user_id="alice", thread_id=sent.thread_id) for _ in range(4)]
    )

    assert errors == []
    assert sorted(result.done for result in results) == [False, False, False, True]
    assert waiting_for_a_worker(sent.thread_id)
