"""Events cost the code paths that raise them no statement: the triggers emit them in the
database, and an emit with no webhook is one statement."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from pytest_django import DjangoAssertNumQueries

from conversations.services import (
    ThreadOutcome,
    message_handle,
    thread_claim,
    thread_outcome_record,
)
from tests.webhooks.factories import WebhookFactory
from webhooks.models import WebhookDelivery
from webhooks.services import webhook_event_emit

pytestmark = pytest.mark.django_db


def test_an_emit_with_no_webhook_is_one_statement(
    django_assert_num_queries: DjangoAssertNumQueries,
) -> None:
    with django_assert_num_queries(1):
        created = webhook_event_emit(user_id="alice", event_type="thread.completed", data={})

    assert created == 0


def _statements_to_complete_a_turn(user_id: str) -> int:
    message = message_handle(user_id=user_id, channel="web", content="hi")
    thread_claim(user_id=user_id, thread_id=message.thread_id, worker_id="w1")
    with CaptureQueriesContext(connection) as captured:
        thread_outcome_record(
            user_id=user_id,
            thread_id=message.thread_id,
            worker_id="w1",
            outcome=ThreadOutcome(kind="completed", response="done"),
        )
    return len(captured.captured_queries)


def test_the_thread_and_entry_triggers_add_no_statement() -> None:
    WebhookFactory.create(user_id="alice", events=["thread.completed", "entry.created"])

    with_webhook = _statements_to_complete_a_turn("alice")
    without = _statements_to_complete_a_turn("bob")

    assert with_webhook == without
    assert sorted(
        WebhookDelivery.objects.filter(user_id="alice").values_list("event_type", flat=True)
    ) == ["entry.created", "thread.completed"]
    assert not WebhookDelivery.objects.filter(user_id="bob").exists()
